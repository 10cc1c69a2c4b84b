#!/usr/bin/env python3
"""PyTorch meta-learning peers (learn2learn, higher, TorchOpt, plain torch) on
the same MAML workloads metajax is benchmarked on.

Each peer is written in its library's idiomatic (documented-example) style and
loops over tasks in Python, which is how these libraries work:

* ``learn2learn``  -- ``l2l.algorithms.MAML(model, lr, first_order=...)``,
  ``clone()`` + ``adapt()`` per task, per-task ``backward()`` then grads scaled
  by 1/meta_batch (as in learn2learn's ``examples/vision/maml_omniglot.py``).
* ``higher``       -- ``higher.innerloop_ctx(model, SGD, copy_initial_weights=False,
  track_higher_grads=not first_order)``, per-task ``backward()`` (as in higher's
  ``examples/maml-omniglot.py``).  First order: with ``track_higher_grads=False``
  higher *detaches* the fast weights, so ``backward()`` would leave the model's
  grads empty; the FOMAML gradient is taken w.r.t. the final fast weights and
  mapped onto the model parameters by hand, as the higher maintainers advise
  (facebookresearch/higher#63).
* ``torchopt``     -- second order: ``torchopt.MetaSGD`` +
  ``torchopt.extract_state_dict/recover_state_dict``, per-task query losses
  stacked and back-propagated once (TorchOpt's ``examples/few-shot/maml_omniglot.py``).
  First order: ``MetaSGD.step`` hard-codes ``create_graph=True``, so the FO variant
  uses TorchOpt's low-level functional API (``torchopt.sgd`` GradientTransformation
  + ``torchopt.apply_updates`` + ``torch.func.functional_call``) with
  ``create_graph=False`` -- labelled ``impl`` in the result.
* ``plain-torch``  -- no meta-learning library: ``torch.func.functional_call`` +
  ``torch.autograd.grad(create_graph=not first_order)``; an independent
  reference for the agreement check and a "plain PyTorch" baseline.

Run ``python benchmarks/peers/torch_peers.py --help``.  Each (peer, workload)
pair runs in its own subprocess so ``peak_rss_mb`` (``ru_maxrss``) is clean.
``--device cuda`` puts the model and the meta-batch on the GPU; the timing loop then
calls ``torch.cuda.synchronize()`` around every timed step and the result also has
``peak_gpu_mem_mb`` (``torch.cuda.max_memory_allocated`` over the timed steps).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from collections import OrderedDict

import numpy as np

PEERS = ("learn2learn", "higher", "torchopt", "plain-torch")


# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------
def _omniglot(name, queries, steps, first_order):
    return {
        "name": name,
        "family": "omniglot",  # conv4-64, 5-way 1-shot, [N,1,28,28] NCHW
        "model": "conv4",
        "ways": 5,
        "shots": 1,
        "queries": queries,  # per class
        "image_size": 28,
        "channels": 1,
        "hidden": 64,
        "meta_batch": 32,
        "inner_lr": 0.4,
        "inner_steps": steps,
        "first_order": first_order,
        "outer_lr": 1e-3,
        "loss": "cross_entropy",
    }


def _sinusoid(name, steps, first_order=False):
    return {
        "name": name,
        "family": "sinusoid",  # MLP 1-40-40-1 ReLU
        "model": "mlp",
        "hidden": 40,
        "k_support": 10,
        "k_query": 10,
        "meta_batch": 25,
        "inner_lr": 0.01,
        "inner_steps": steps,
        "first_order": first_order,
        "outer_lr": 1e-3,
        "loss": "mse",
    }


def _make_workloads():
    wl = OrderedDict()
    for fam, q in (("W1", 1), ("W2", 15)):
        for order in ("so", "fo"):
            for steps in (1, 5):
                name = f"{fam}-{order}-{steps}step"
                wl[name] = _omniglot(name, q, steps, order == "fo")
    for steps in (1, 5):
        name = f"W3-so-{steps}step"
        wl[name] = _sinusoid(name, steps)
    return wl


#: name -> workload dict.  W1/W2: {so,fo} x {1,5} inner steps; W3: so x {1,5}.
WORKLOADS = _make_workloads()


def get_workload(workload):
    if isinstance(workload, str):
        return dict(WORKLOADS[workload])
    return dict(workload)


# --------------------------------------------------------------------------
# Data (numpy, fixed seed) -- the exact arrays are exported by reference_meta_grad
# --------------------------------------------------------------------------
def make_inputs(workload, seed=0):
    """Return a dict of numpy arrays for one meta-batch.

    omniglot: x_support float32 [T, ways*shots, 1, 28, 28] (NCHW),
              y_support int64 [T, ways*shots] = tile(arange(ways), shots),
              x_query   float32 [T, ways*queries, 1, 28, 28],
              y_query   int64 [T, ways*queries] = tile(arange(ways), queries).
    sinusoid: x_support/x_query float32 [T, K, 1] ~ U[-5, 5],
              y = amp * sin(x + phase), amp ~ U[0.1, 5], phase ~ U[0, pi]
              (float32 [T, K, 1]); also amplitude/phase [T].
    """
    w = get_workload(workload)
    rng = np.random.default_rng(seed)
    T = w["meta_batch"]
    if w["family"] == "omniglot":
        n_s = w["ways"] * w["shots"]
        n_q = w["ways"] * w["queries"]
        hw, c = w["image_size"], w["channels"]
        xs = rng.standard_normal((T, n_s, c, hw, hw), dtype=np.float32)
        xq = rng.standard_normal((T, n_q, c, hw, hw), dtype=np.float32)
        ys = np.broadcast_to(np.tile(np.arange(w["ways"]), w["shots"]), (T, n_s)).astype(np.int64)
        yq = np.broadcast_to(np.tile(np.arange(w["ways"]), w["queries"]), (T, n_q)).astype(np.int64)
        return {"x_support": xs, "y_support": ys, "x_query": xq, "y_query": yq}
    amp = rng.uniform(0.1, 5.0, size=(T,)).astype(np.float32)
    phase = rng.uniform(0.0, np.pi, size=(T,)).astype(np.float32)
    xs = rng.uniform(-5.0, 5.0, size=(T, w["k_support"], 1)).astype(np.float32)
    xq = rng.uniform(-5.0, 5.0, size=(T, w["k_query"], 1)).astype(np.float32)
    ys = (amp[:, None, None] * np.sin(xs + phase[:, None, None])).astype(np.float32)
    yq = (amp[:, None, None] * np.sin(xq + phase[:, None, None])).astype(np.float32)
    return {
        "x_support": xs,
        "y_support": ys,
        "x_query": xq,
        "y_query": yq,
        "amplitude": amp,
        "phase": phase,
    }


# --------------------------------------------------------------------------
# Models (torch layout: conv OIHW, linear [out, in])
# --------------------------------------------------------------------------
def build_model(workload, seed=0):
    import torch
    from torch import nn

    w = get_workload(workload)
    torch.manual_seed(seed)
    if w["model"] == "conv4":
        layers = OrderedDict()
        cin = w["channels"]
        for i in range(1, 5):
            layers[f"conv{i}"] = nn.Conv2d(cin, w["hidden"], 3, padding=1, bias=True)
            layers[f"bn{i}"] = nn.BatchNorm2d(w["hidden"], affine=True, track_running_stats=False)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"pool{i}"] = nn.MaxPool2d(2, 2)
            cin = w["hidden"]
        layers["flatten"] = nn.Flatten()
        layers["head"] = nn.Linear(w["hidden"], w["ways"])  # 28->14->7->3->1 => 64 feats
        return nn.Sequential(layers)
    h = w["hidden"]
    return nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(1, h)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(h, h)),
                ("relu2", nn.ReLU()),
                ("fc3", nn.Linear(h, 1)),
            ]
        )
    )


def _loss_fn(workload):
    import torch.nn.functional as F

    return F.cross_entropy if get_workload(workload)["loss"] == "cross_entropy" else F.mse_loss


def _to_torch(inputs, dtype, device="cpu"):
    import torch

    out = {}
    for k in ("x_support", "y_support", "x_query", "y_query"):
        t = torch.from_numpy(np.ascontiguousarray(inputs[k]))
        out[k] = (t.to(dtype) if t.is_floating_point() else t).to(device)
    return out


# --------------------------------------------------------------------------
# learn2learn import (torchvision shim)
# --------------------------------------------------------------------------
class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Minimal stand-in for ``torchvision`` so that ``import learn2learn`` works.

    learn2learn's package ``__init__`` imports its vision datasets/benchmarks,
    which import torchvision at module level.  The only torchvision on PyPI for
    torch 2.13 is a CUDA build that cannot load against the CPU torch wheel
    ("operator torchvision::nms does not exist"), and learn2learn's MAML code
    (``learn2learn.algorithms.maml`` / ``learn2learn.utils``) never touches
    torchvision.  The stub is installed only when a real torchvision fails to
    import; every attribute is an inert placeholder class.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__version__ = "0+stub"
        mod.__doc__ = "learn2learn-import stub (benchmarks/peers/torch_peers.py)"
        modname = spec.name

        def __getattr__(name, _modname=modname):
            if name.startswith("__"):
                raise AttributeError(name)
            if name[:1].islower():
                return importlib.import_module(f"{_modname}.{name}")
            return type(
                name,
                (),
                {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None},
            )

        mod.__getattr__ = __getattr__
        return mod

    def exec_module(self, module):
        pass


TORCHVISION_STUBBED = False


def _l2l_is_minimal():
    """True for a minimal learn2learn copy (``make_minimal_l2l.py``): no ``vision``
    subpackage, so nothing imports torchvision and neither it nor the stub is needed."""
    spec = importlib.util.find_spec("learn2learn")
    locs = list(spec.submodule_search_locations or []) if spec else []
    return bool(locs) and not any(os.path.isdir(os.path.join(d, "vision")) for d in locs)


def import_learn2learn():
    global TORCHVISION_STUBBED
    if "learn2learn" in sys.modules:
        return sys.modules["learn2learn"]
    if not _l2l_is_minimal():
        try:
            import torchvision  # noqa: F401
        except Exception:  # missing, or the CUDA wheel failing against CPU torch
            for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[k]
            sys.meta_path.insert(0, _TorchvisionStub())
            TORCHVISION_STUBBED = True
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn
    return learn2learn


# --------------------------------------------------------------------------
# Peers.  Each returns a runner with .model, .grads_step() -> float meta-loss
# (grads left in model params' .grad), .meta_step() -> float (grads + Adam).
# --------------------------------------------------------------------------
class _Runner:
    impl = ""

    def __init__(self, workload, model, data):
        import torch

        self.w = workload
        self.model = model
        self.data = data
        self.loss_fn = _loss_fn(workload)
        self.T = workload["meta_batch"]
        self.steps = workload["inner_steps"]
        self.fo = workload["first_order"]
        self.lr = workload["inner_lr"]
        self.outer_opt = torch.optim.Adam(self.opt_params(), lr=workload["outer_lr"])

    def opt_params(self):
        return self.model.parameters()

    def meta_step(self):
        loss = self.grads_step()
        self.outer_opt.step()
        return loss


class L2LRunner(_Runner):
    impl = "l2l.algorithms.MAML clone()/adapt()"

    def __init__(self, workload, model, data):
        l2l = import_learn2learn()
        self.maml = l2l.algorithms.MAML(
            model, lr=workload["inner_lr"], first_order=workload["first_order"]
        )
        super().__init__(workload, model, data)

    def opt_params(self):
        return self.maml.parameters()

    def grads_step(self):
        d, loss_fn = self.data, self.loss_fn
        self.outer_opt.zero_grad()
        total = 0.0
        for t in range(self.T):
            learner = self.maml.clone()
            for _ in range(self.steps):
                learner.adapt(loss_fn(learner(d["x_support"][t]), d["y_support"][t]))
            qloss = loss_fn(learner(d["x_query"][t]), d["y_query"][t])
            qloss.backward()
            total += qloss.detach()
        for p in self.maml.parameters():
            p.grad.data.mul_(1.0 / self.T)
        return float(total) / self.T


class HigherRunner(_Runner):
    impl = "higher.innerloop_ctx(copy_initial_weights=False)"

    def __init__(self, workload, model, data):
        import higher
        import torch

        self.higher = higher
        super().__init__(workload, model, data)
        self.inner_opt = torch.optim.SGD(model.parameters(), lr=workload["inner_lr"])
        if workload["first_order"]:
            self.impl += " track_higher_grads=False + grads of final fast weights mapped to model (higher#63)"

    def grads_step(self):
        import torch

        d, loss_fn, model = self.data, self.loss_fn, self.model
        self.outer_opt.zero_grad()
        total = 0.0
        params = list(model.parameters())
        for t in range(self.T):
            with self.higher.innerloop_ctx(
                model, self.inner_opt, copy_initial_weights=False, track_higher_grads=not self.fo
            ) as (fnet, diffopt):
                for _ in range(self.steps):
                    diffopt.step(loss_fn(fnet(d["x_support"][t]), d["y_support"][t]))
                qloss = loss_fn(fnet(d["x_query"][t]), d["y_query"][t])
                if self.fo:
                    gs = torch.autograd.grad(qloss / self.T, list(fnet.parameters()))
                    for p, g in zip(params, gs):
                        p.grad = g.clone() if p.grad is None else p.grad.add_(g)
                else:
                    (qloss / self.T).backward()
                total += qloss.detach()
        return float(total) / self.T


class TorchOptRunner(_Runner):
    def __init__(self, workload, model, data):
        import torchopt

        self.torchopt = torchopt
        super().__init__(workload, model, data)
        if workload["first_order"]:
            self.impl = "torchopt functional API: torchopt.sgd + apply_updates + torch.func.functional_call (create_graph=False)"
            self.sgd = torchopt.sgd(lr=workload["inner_lr"])
            self.names = [n for n, _ in model.named_parameters()]
        else:
            self.impl = "torchopt.MetaSGD + extract_state_dict/recover_state_dict"
            self.inner_opt = torchopt.MetaSGD(model, lr=workload["inner_lr"])

    def grads_step(self):
        return self._fo_step() if self.fo else self._so_step()

    def _so_step(self):
        import torch

        to, d, loss_fn, net = self.torchopt, self.data, self.loss_fn, self.model
        self.outer_opt.zero_grad()
        net_state = to.extract_state_dict(net, by="reference", detach_buffers=True)
        opt_state = to.extract_state_dict(self.inner_opt, by="reference")
        losses = []
        for t in range(self.T):
            for _ in range(self.steps):
                self.inner_opt.step(loss_fn(net(d["x_support"][t]), d["y_support"][t]))
            losses.append(loss_fn(net(d["x_query"][t]), d["y_query"][t]))
            to.recover_state_dict(net, net_state)
            to.recover_state_dict(self.inner_opt, opt_state)
        loss = torch.stack(losses).mean()
        loss.backward()
        return float(loss.detach())

    def _fo_step(self):
        import torch
        from torch.func import functional_call

        to, d, loss_fn, net = self.torchopt, self.data, self.loss_fn, self.model
        self.outer_opt.zero_grad()
        params = tuple(net.parameters())
        losses = []
        for t in range(self.T):
            fast = params
            state = self.sgd.init(fast)
            for _ in range(self.steps):
                out = functional_call(net, dict(zip(self.names, fast)), (d["x_support"][t],))
                grads = torch.autograd.grad(loss_fn(out, d["y_support"][t]), fast)
                updates, state = self.sgd.update(grads, state, inplace=False)
                fast = to.apply_updates(fast, updates, inplace=False)
            out = functional_call(net, dict(zip(self.names, fast)), (d["x_query"][t],))
            losses.append(loss_fn(out, d["y_query"][t]))
        loss = torch.stack(losses).mean()
        loss.backward()
        return float(loss.detach())


class PlainTorchRunner(_Runner):
    impl = "torch.func.functional_call + torch.autograd.grad (no meta-learning library)"

    def __init__(self, workload, model, data):
        super().__init__(workload, model, data)
        self.names = [n for n, _ in model.named_parameters()]

    def grads_step(self):
        import torch
        from torch.func import functional_call

        d, loss_fn, net = self.data, self.loss_fn, self.model
        self.outer_opt.zero_grad()
        params = tuple(net.parameters())
        total = 0.0
        for t in range(self.T):
            fast = params
            for _ in range(self.steps):
                out = functional_call(net, dict(zip(self.names, fast)), (d["x_support"][t],))
                gs = torch.autograd.grad(
                    loss_fn(out, d["y_support"][t]), fast, create_graph=not self.fo
                )
                fast = tuple(p - self.lr * g for p, g in zip(fast, gs))
            out = functional_call(net, dict(zip(self.names, fast)), (d["x_query"][t],))
            qloss = loss_fn(out, d["y_query"][t])
            (qloss / self.T).backward()
            total += qloss.detach()
        return float(total) / self.T


_RUNNERS = {
    "learn2learn": L2LRunner,
    "higher": HigherRunner,
    "torchopt": TorchOptRunner,
    "plain-torch": PlainTorchRunner,
}


def _peer_module(peer):
    if peer == "plain-torch":
        return importlib.import_module("torch")
    if peer == "learn2learn":
        return import_learn2learn()
    return importlib.import_module(peer)


def lib_version(peer):
    """The peer library's version: its installed metadata, else its ``__version__``
    (a copy on PYTHONPATH without a dist-info, e.g. the minimal learn2learn)."""
    mod = _peer_module(peer)
    if peer == "plain-torch":
        return mod.__version__
    if getattr(mod, "__version__", None):
        return mod.__version__
    try:
        return importlib.metadata.version(peer)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def lib_file(peer):
    """Where the peer library was imported from (which copy was used)."""
    return getattr(_peer_module(peer), "__file__", None)


def make_runner(peer, workload, *, seed=0, dtype=None, state_dict=None, inputs=None, device="cpu"):
    """Build (model, data, runner) for ``peer`` on ``workload``.

    ``state_dict``: optional dict name -> tensor/ndarray to load as initial weights.
    ``inputs``: optional dict of numpy arrays (as from ``make_inputs``).
    ``device``: torch device for the model and the inputs ("cpu", "cuda").
    """
    import torch

    w = get_workload(workload)
    dtype = dtype or torch.float32
    model = build_model(w, seed).to(dtype)
    if state_dict is not None:
        model.load_state_dict(
            {k: torch.as_tensor(np.asarray(v)).to(dtype) for k, v in state_dict.items()}
        )
    model = model.to(device)
    data = _to_torch(inputs if inputs is not None else make_inputs(w, seed), dtype, device)
    return _RUNNERS[peer](w, model, data)


def _rss_now_mb():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _device_info(dev) -> dict:
    """``device`` / ``device_name`` (+ CUDA details) for a result record."""
    import platform

    import torch

    if dev.type != "cuda":
        return {"device": str(dev), "device_name": platform.processor() or platform.machine()}
    info = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
    }
    try:  # TF32 settings (their API moved in newer torch; recording them is best effort)
        info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        info["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    except Exception:
        pass
    return info


def time_peer(
    peer: str,
    workload,
    *,
    warmup: int,
    iters: int,
    threads: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Time one peer on one workload *in this process*.

    One timed step = zero_grad + forward/backward over all meta_batch tasks
    (Python loop) + Adam step, timed with ``time.perf_counter``.  On CUDA the
    clock is read only after ``torch.cuda.synchronize()`` (after warm-up and
    after each timed step), and ``peak_gpu_mem_mb`` is
    ``torch.cuda.max_memory_allocated()`` over the timed steps (reset after
    warm-up, so it includes the weights, the Adam state and the inputs).
    ``peak_rss_mb`` is this process's ``ru_maxrss``: call it in a fresh process
    (``run_isolated`` / the CLI do) for a clean number.
    """
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: torch {torch.__version__} sees no CUDA device")

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    nthreads = threads or os.cpu_count()
    torch.set_num_threads(nthreads)  # CPU intra-op threads; harmless on CUDA
    w = get_workload(workload)
    runner = make_runner(peer, w, seed=seed, device=dev)
    sync()
    rss_setup = _rss_now_mb()
    gpu_setup = torch.cuda.memory_allocated(dev) / 2**20 if cuda else None
    first_loss = None
    for _ in range(warmup):
        loss = runner.meta_step()
        first_loss = loss if first_loss is None else first_loss
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        loss = runner.meta_step()
        sync()
        times.append(time.perf_counter() - t0)
        first_loss = loss if first_loss is None else first_loss
    med = statistics.median(times) if times else float("nan")
    if len(times) >= 2:
        q = np.percentile(times, [25, 75])
        iqr = float(q[1] - q[0])
    else:
        iqr = 0.0 if times else float("nan")
    return {
        "peer": peer,
        "workload": w["name"],
        "sec_per_step_median": med,
        "sec_per_step_iqr": iqr,
        "tasks_per_s": w["meta_batch"] / med if times else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_after_setup_mb": rss_setup,
        "rss_end_mb": _rss_now_mb(),
        **_device_info(dev),
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
        "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved(dev) / 2**20 if cuda else None,
        "gpu_mem_after_setup_mb": gpu_setup,
        "torch_version": torch.__version__,
        "lib_version": lib_version(peer),
        "lib_file": lib_file(peer),
        "threads": nthreads,
        "warmup": warmup,
        "iters": iters,
        "times": times,
        "first_loss": first_loss,
        "last_loss": loss if (warmup or iters) else None,
        "impl": runner.impl,
        "torchvision_stubbed": TORCHVISION_STUBBED,
    }


def run_isolated(
    peer, workload_name, *, warmup, iters, threads=None, seed=0, timeout=None, device="cpu"
):
    """Run ``time_peer`` in a fresh Python subprocess; returns its result dict."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--peers",
        peer,
        "--workloads",
        workload_name,
        "--warmup",
        str(warmup),
        "--iters",
        str(iters),
        "--seed",
        str(seed),
        "--device",
        str(device),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            "peer": peer,
            "workload": workload_name,
            "device": str(device),
            "error": f"timeout after {timeout}s",
        }
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {
        "peer": peer,
        "workload": workload_name,
        "device": str(device),
        "error": f"rc={p.returncode}",
        "stderr_tail": p.stderr[-2000:],
    }


# --------------------------------------------------------------------------
# Reference meta-gradient for cross-checking metajax
# --------------------------------------------------------------------------
def reference_meta_grad(workload, seed=0, *, meta_batch=None, peer="learn2learn"):
    """learn2learn meta-loss and meta-gradient at the initial weights (no Adam step).

    Returns ``(loss, grads, inputs, weights)``:
      loss    -- float, mean over tasks of the post-adaptation query loss.
      grads   -- dict name -> np.ndarray, d loss / d initial weights.
      inputs  -- dict of np.ndarray (see ``make_inputs``; images NCHW).
      weights -- dict name -> np.ndarray, the initial weights (torch init, ``torch.manual_seed(seed)``).
    Parameter names/layouts (torch):
      conv4: conv{i}.weight [64, C_in, 3, 3] OIHW (JAX/flax HWIO = w.transpose(2, 3, 1, 0)),
             conv{i}.bias [64], bn{i}.weight = BN scale gamma [64], bn{i}.bias = BN beta [64]
             (BN: batch statistics over N,H,W, biased variance, eps=1e-5),
             head.weight [ways, 64] ([out, in]; flax Dense kernel = w.T), head.bias [ways].
             Flatten is of a [N, 64, 1, 1] map, so NCHW vs NHWC order does not matter.
      mlp:   fc{1,2,3}.weight [out, in], fc{1,2,3}.bias [out].
    ``meta_batch`` overrides the workload's meta-batch (smaller = faster check).
    """
    import torch

    torch.set_num_threads(os.cpu_count())
    w = get_workload(workload)
    if meta_batch is not None:
        w["meta_batch"] = meta_batch
    inputs = make_inputs(w, seed)
    runner = make_runner(peer, w, seed=seed, inputs=inputs)
    weights = {k: v.detach().cpu().numpy().copy() for k, v in runner.model.state_dict().items()}
    loss = runner.grads_step()
    grads = {n: p.grad.detach().cpu().numpy().copy() for n, p in runner.model.named_parameters()}
    return loss, grads, inputs, weights


def dump_reference(path, workload, seed=0, *, meta_batch=None):
    """Save ``reference_meta_grad`` to an .npz: keys loss, grad/<name>, weight/<name>, input/<key>."""
    loss, grads, inputs, weights = reference_meta_grad(workload, seed, meta_batch=meta_batch)
    arrs = {"loss": np.asarray(loss, np.float64)}
    arrs.update({f"grad/{k}": v for k, v in grads.items()})
    arrs.update({f"weight/{k}": v for k, v in weights.items()})
    arrs.update({f"input/{k}": v for k, v in inputs.items()})
    np.savez(path, **arrs)
    return loss


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--peers", nargs="+", default=["learn2learn", "higher", "torchopt"], choices=PEERS
    )
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="torch device for the timed runs (--dump-reference always runs on the CPU)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=None, help="per (peer, workload) seconds")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--list", action="store_true", help="print workloads and exit")
    ap.add_argument(
        "--dump-reference",
        metavar="NPZ",
        default=None,
        help="write reference_meta_grad(--workloads[0], --seed) to NPZ and exit",
    )
    ap.add_argument("--meta-batch", type=int, default=None, help="override (with --dump-reference)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.list:
        for name, w in WORKLOADS.items():
            print(name, json.dumps(w))
        return 0
    if a.dump_reference:
        loss = dump_reference(a.dump_reference, a.workloads[0], a.seed, meta_batch=a.meta_batch)
        print(f"wrote {a.dump_reference}: {a.workloads[0]} seed={a.seed} loss={loss:.8f}")
        return 0
    if a.worker:
        res = time_peer(
            a.peers[0],
            a.workloads[0],
            warmup=a.warmup,
            iters=a.iters,
            threads=a.threads,
            seed=a.seed,
            device=a.device,
        )
        print(json.dumps(res))
        return 0

    out = open(a.out, "a") if a.out else None
    for wname in a.workloads:
        for peer in a.peers:
            res = run_isolated(
                peer,
                wname,
                warmup=a.warmup,
                iters=a.iters,
                threads=a.threads,
                seed=a.seed,
                timeout=a.timeout,
                device=a.device,
            )
            if "error" in res:
                print(
                    f"{peer:12s} {wname:12s} ERROR {res['error']} {res.get('stderr_tail', '')[-500:]}",
                    flush=True,
                )
            else:
                print(
                    f"{peer:12s} {wname:12s} median {res['sec_per_step_median'] * 1e3:9.1f} ms/step"
                    f"  iqr {res['sec_per_step_iqr'] * 1e3:7.1f} ms  {res['tasks_per_s']:8.1f} tasks/s"
                    f"  peak_rss {res['peak_rss_mb']:7.0f} MB"
                    + (
                        f"  peak_gpu {res['peak_gpu_mem_mb']:7.0f} MB"
                        if res.get("peak_gpu_mem_mb") is not None
                        else ""
                    )
                    + f"  loss {res['last_loss']:.4f}",
                    flush=True,
                )
            if out:
                out.write(json.dumps(res) + "\n")
                out.flush()
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
