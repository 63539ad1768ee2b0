"""Multi-host data parallelism: two JAX processes (two CPU devices each) joined by
``jax.distributed.initialize`` over localhost, as on a pod with two hosts."""

import textwrap

from tests.conftest import run_processes

MULTIHOST = textwrap.dedent(
    """
    import json, os, tempfile
    import jax
    jax.distributed.initialize(
        coordinator_address=os.environ["JAXREG_COORDINATOR"],
        num_processes=int(os.environ["JAXREG_NUM_PROCESSES"]),
        process_id=int(os.environ["JAXREG_PROCESS_ID"]),
    )
    import numpy as np, optax
    from jax.sharding import Mesh
    import jaxreg
    from jaxreg.training import Trainer
    from jaxreg.fitting import Loop, fit
    from tests.test_training import MLP, L2, X, Y

    pid, n_proc = jax.process_index(), jax.process_count()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    kw = dict(model=MLP(), optimizer=optax.adam(1e-2), penalties={"l2": L2})
    single, sharded = Trainer(**kw), Trainer(**kw, mesh=mesh)
    host = lambda t: jax.tree.map(np.asarray, jax.device_get(t))
    err = lambda u, v: max(
        float(np.max(np.abs(np.asarray(p) - np.asarray(q))))
        for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(v))
    )
    x, y = np.asarray(X), np.asarray(Y)

    a = single.init(jax.random.key(0), x[:16])
    b = sharded.init(jax.random.key(0), x[:16])
    c = sharded.init(jax.random.key(0), x[:16])
    for i in range(2):
        rows = slice(16 * i, 16 * i + 16)
        a, ma = single.train_step(a, (x[rows], y[rows]))
        # the global batch given to every process ...
        b, mb = sharded.train_step(b, sharded.shard_batch((x[rows], y[rows])))
        # ... or each process's own 8 rows of it
        own = slice(16 * i + 8 * pid, 16 * i + 8 * pid + 8)
        c, mc = sharded.train_step(c, sharded.shard_batch((x[own], y[own]), process_local=True))
    fa, ha, _, _ = fit(single, single.init(jax.random.key(1), x[:16]), (x, y), (x, y),
                       epochs=2, batch_size=16, loop=Loop(3, 1))
    fb, hb, _, _ = fit(sharded, sharded.init(jax.random.key(1), x[:16]), (x, y), (x, y),
                       epochs=2, batch_size=16, loop=Loop(3, 1))
    try:
        sharded.shard_batch((x[:5], y[:5]), process_local=True)
        error = ""
    except ValueError as e:
        error = str(e)
    # a checkpoint: every process calls save, process 0 writes, all restore it
    directory = os.environ["JAXREG_CKPT"]
    jaxreg.save_checkpoint(directory, fb, fb.step)
    restored = jaxreg.restore_checkpoint(directory, sharded.init(jax.random.key(2), x[:16]))
    print("RESULT " + json.dumps({
        "processes": n_proc,
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "global_batch": err(host(a.params), host(b.params)),
        "global_stats": err(host(a.batch_stats), host(b.batch_stats)),
        "global_loss": abs(float(ma["loss"]) - float(mb["loss"])),
        "local_batch": err(host(a.params), host(c.params)),
        "local_loss": abs(float(ma["loss"]) - float(mc["loss"])),
        "fit": err(host(fa.params), host(fb.params)),
        "fit_val": abs(ha.epochs[-1]["val_loss"] - hb.epochs[-1]["val_loss"]),
        "restored": err(host(fb.params), host(restored.params)),
        "restored_step": int(restored.step),
        "error": error,
    }))
    """
)


def test_two_processes_train_like_one_device(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREG_CKPT", str(tmp_path / "ckpt"))
    results = run_processes(MULTIHOST, processes=2, devices=2)
    for r in results:
        assert r["processes"] == 2 and r["devices"] == 4 and r["local_devices"] == 2, r
        assert r["global_batch"] < 1e-5 and r["global_stats"] < 1e-5, r
        assert r["global_loss"] < 1e-5 and r["local_loss"] < 1e-5, r
        assert r["local_batch"] < 1e-5, r
        assert r["fit"] < 1e-5 and r["fit_val"] < 1e-5, r
        assert r["restored"] == 0.0 and r["restored_step"] == 2 * (96 // 16), r
        assert "divisible" in r["error"] and "10" in r["error"], r
