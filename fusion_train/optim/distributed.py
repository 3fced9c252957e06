"""FusionOpt on ``torch.distributed``: FSDP2 (DTensor parameters sharded on dim 0) and DDP.

Two modes, chosen from the parameters and the ``process_group`` argument of :class:`FusionOpt`:

``"sharded"`` (FSDP2, detected automatically: every parameter is a DTensor on a 1-D mesh with
placement ``(Shard(0),)``, as ``torch.distributed.fsdp.fully_shard`` leaves them)
    Elementwise work stays on the local shards: MONA, the spectral momentum, the scalar group
    (Schedule-Free AdamW / AdamW) and the Schedule-Free interpolation (``z``, ``y``, ``x``).
    Spectral matrices are orthogonalised *whole*: every spectral parameter has a fixed owner rank
    (round-robin over the parameters of each same-shape batch, continuing the count from one batch
    to the next so that world sizes that do not divide a batch still balance). One
    ``all_to_all_single`` per step sends each owner the row shards of its matrices (the momentum
    direction, plus the raw gradient with KL-Shampoo, plus the NorMuon row statistics); the owner
    runs KL-Shampoo (whose factors it holds), batched Newton–Schulz per same shape and NorMuon on
    the full matrix, and a second ``all_to_all_single`` returns each rank its rows of the update
    and of the row statistics. This is microsoft/dion's "megabatch" scheme
    (``dion/megabatch_base.py``) and torchtitan's distributed Muon
    (``components/distributed_optimizers/muon/distributed_muon.py``) without padding: the split
    sizes of ``all_to_all_single`` carry uneven and empty shards as they are.

    Why all-to-all rather than all-gather: for ``n`` matrices of ``R·C`` elements, the all-to-all
    moves each element to its owner and the result back (``2·n·R·C·(W−1)/W`` elements in total),
    while gathering every matrix on every rank (each rank then computes all of them and keeps its
    rows: no return trip, no split of the work) moves ``n·R·C·(W−1)``: ``W/2`` times more, equal
    at ``W = 2`` and 4× at ``W = 8``; ``benchmarks/distributed_step.py`` counts both.

``"replicated"`` (DDP: plain parameters and ``process_group=pg``)
    Every rank holds the full (already averaged) gradients. Each same-shape Newton–Schulz batch is
    split in contiguous blocks over the group and the results are all-gathered, as in
    KellerJordan/Muon's and microsoft/dion's DDP paths. MONA, KL-Shampoo and NorMuon are computed on
    every rank (their states stay replicated, which keeps checkpoints simple).

Global scalars are reduced exactly once per step, by one ``all_reduce`` of a small vector: the
non-finite flag (summed: any rank's non-finite gradient or loss skips the step on every rank), the
loss passed to ``step(loss=…)`` (averaged over the group, so the Polyak step sees the global-batch
loss) and, when sharded with Polyak, the partial sums over the local shards of the normaliser's
``⟨g, U_g⟩`` (one per param group; ``D_t = Σ_g η_g·⟨g, U_g⟩``, polyak.py) and of ``⟨g, z − y⟩``.
Since ``D_t`` needs the directions, the sharded all-reduce comes last: the step is computed
speculatively under the rank's own finiteness flag into new state tensors, and the global flag
then keeps ``torch.where(finite, new, old)`` (bit-identical to the single process's gated update).
The FSDP2 step reuses the optimizer's per-parameter functions (``momentum_direction_``,
``scalar_direction_``, ``apply_update_``, ``_orthogonalize_buckets``, ``_finish_spectral``) on the
local rows and on the owners' whole matrices. Every rank therefore takes the same decision. No host
synchronisation is added (with ``nonfinite="raise"`` the reduced flag is read on the host, on every
rank, before any state changes).

Checkpoints: all state entries exist on every rank from construction (as microsoft/dion does), so
``torch.distributed.checkpoint`` sees the same keys everywhere and ``get_optimizer_state_dict`` does
not take its "initialise by a zero-gradient step" path. Per-parameter state is a DTensor with the
parameter's placement (sharded mode), so DCP reshards it across world sizes. KL-Shampoo factors
live on their owner as full tensors; :meth:`DistributedFusion.sync_state` scatters them into
row-sharded DTensors in the optimizer state before ``state_dict()`` (a collective), and after
``load_state_dict`` the next step gathers them to the (possibly new) owner. Optimizer-wide state
(Polyak statistics, train/eval mode, the non-finite counter) travels in the first parameter
group (``"fusion_extra"``), which DCP keeps; ``get_optimizer_state_dict`` drops other top-level keys.

Example (each of ``torchrun --nproc_per_node 2`` processes)::

    >>> dist.init_process_group("gloo")                                    # doctest: +SKIP
    >>> fully_shard(model)                                                 # doctest: +SKIP
    >>> opt = FusionOpt(build_param_groups(model), lr=1e-3)  # detects FSDP2  # doctest: +SKIP
    >>> loss.backward(); opt.step(loss=loss)                 # local loss    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .hot_dtype import auto_hot_dtype, set_auto_hot_dtype
from .kl_shampoo import KLShampooState, kl_shampoo_init_state, kl_shampoo_refresh_due

if TYPE_CHECKING:  # pragma: no cover
    from .optimizer import FusionOpt

__all__ = ["DistributedFusion", "attach_distributed", "full_tensor", "is_dtensor", "row_ranges"]

try:  # DTensor is public since torch 2.4
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # pragma: no cover - torch without distributed support
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (FSDP2 parameters are)."""
    return DTensor is not None and isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The full tensor behind ``t``: ``t.full_tensor()`` for a DTensor (a collective: call it on
    every rank), ``t`` itself otherwise."""
    return t.full_tensor() if is_dtensor(t) else t


def row_ranges(rows: int, world: int) -> list[tuple[int, int]]:
    """Row range ``[start, stop)`` of each rank for ``Shard(0)`` of ``rows`` rows over ``world``
    ranks: ``torch.chunk`` semantics (chunks of ``ceil(rows/world)``, trailing ranks may be empty),
    which is what FSDP2 and DTensor use.

    Example:
        >>> row_ranges(5, 3), row_ranges(2, 3)
        ([(0, 2), (2, 4), (4, 5)], [(0, 1), (1, 2), (2, 2)])
    """
    chunk = -(-rows // world) if rows else 0
    return [(min(rows, r * chunk), min(rows, (r + 1) * chunk)) for r in range(world)]


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _local(t: torch.Tensor) -> torch.Tensor:
    # the DTensor's own local tensor (same storage: in-place updates reach the DTensor)
    return t._local_tensor if is_dtensor(t) else t


@dataclass
class _Spec:
    """What every rank knows about one spectral parameter."""

    index: int          # position among the optimizer's parameters
    owner: int          # rank that orthogonalises it whole
    rows: int
    cols: int           # columns of the (rows, cols) matrix view (conv kernels flattened)
    kshape: tuple[int, ...]  # KL-Shampoo / Newton–Schulz view: (rows, cols) or (k, rows/k, cols)


class DistributedFusion:
    """The distributed half of a :class:`FusionOpt` (built by :func:`attach_distributed`).

    Attributes:
        mode: ``"sharded"`` (FSDP2 DTensors) or ``"replicated"`` (DDP with a process group).
        group, world, rank: the process group the optimizer communicates over.
        bytes_communicated: bytes this rank sent through FusionOpt's own collectives so far
            (the all-to-alls, the all-gathers and the scalar all-reduce; not FSDP2's traffic).
        ns_matrices: matrices this rank has orthogonalised so far (the Newton–Schulz share).
    """

    def __init__(self, opt: FusionOpt, mode: str, group: Any, mesh: Any = None) -> None:
        self.mode, self.group, self.mesh = mode, group, mesh
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.bytes_communicated = 0
        self.ns_matrices = 0
        self._params = [p for g in opt.param_groups for p in g["params"]]
        self._specs: dict[int, _Spec] = {}
        self._owned_kl: dict[int, KLShampooState] | None = {}
        self._agree_hot_dtype(opt)
        self._assign_owners(opt)
        self._prepopulate(opt)
        if mode == "replicated":
            opt._orthogonalize = _SplitOrthogonalizer(opt._orthogonalize, self)

    @property
    def sharded(self) -> bool:
        return self.mode == "sharded"

    # ------------------------------------------------------------------ construction
    def _agree_hot_dtype(self, opt: FusionOpt) -> None:
        """``hot_dtype="auto"`` on a CPU is a timing measurement, which ranks may decide
        differently; every rank takes rank 0's decision (one broadcast at construction), so the
        owners' Newton–Schulz and the single-process reference agree bit for bit."""
        if not any(g["hot_dtype"] == "auto" for g in [opt.defaults, *opt.param_groups]):
            return
        device = _local(self._params[0]).device if self._params else torch.device("cpu")
        if device.type != "cpu":
            return  # CUDA's rule is deterministic (bf16 support), the same on every rank
        vote = torch.tensor([float(auto_hot_dtype(device) == "bf16")])
        dist.broadcast(vote, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0, group=self.group)
        set_auto_hot_dtype(device, "bf16" if float(vote) else "fp32")

    def _assign_owners(self, opt: FusionOpt) -> None:
        """Fixed owners: round-robin within each same-shape batch, the count running on across
        batches (so 3 batches of 1 matrix on 2 ranks go to ranks 0, 1, 0)."""
        buckets: dict[tuple[int, int], list[tuple[int, torch.Tensor, dict]]] = {}
        index = 0
        for group in opt.param_groups:
            for p in group["params"]:
                if group["group_type"] == "spectral":
                    rows, k = p.shape[0], group["ns_split"]
                    cols = p.numel() // rows
                    a, b = rows // k, cols
                    buckets.setdefault((min(a, b), max(a, b)), []).append((index, p, group))
                index += 1
        turn = 0
        for key in sorted(buckets):
            for index, p, group in buckets[key]:
                rows, k = p.shape[0], group["ns_split"]
                cols = p.numel() // rows
                kshape = (rows, cols) if k == 1 else (k, rows // k, cols)
                self._specs[index] = _Spec(index, turn % self.world, rows, cols, kshape)
                turn += 1

    def _like_param(self, p: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``value`` (full size, dim 0 = the parameter's rows) laid out like ``p``: the local
        row chunk as a DTensor with ``p``'s placement in sharded mode, ``value`` itself otherwise."""
        if not self.sharded:
            return value
        return distribute_tensor(value, p.device_mesh, [Shard(0)], src_data_rank=None)

    def _prepopulate(self, opt: FusionOpt) -> None:
        """Create every state entry the step would create lazily, with the same initial values."""
        comps = opt.components
        index = 0
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state[p]
                dt = _state_dtype(p)
                state["step"] = torch.zeros((), dtype=torch.float32, device=_local(p).device)
                if opt.sf and p.dtype in (torch.float16, torch.bfloat16):
                    # as FusionOpt._init_sf_state: z and x in fp32, the parameter holds y rounded
                    state["z"] = p.detach().to(torch.float32)
                    state["x"] = state["z"].clone()
                elif opt.sf:
                    state["z"] = p.detach().clone()
                if group["group_type"] == "scalar":
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=dt)
                    if not opt.sf:
                        state["exp_avg"] = torch.zeros_like(p, dtype=dt)
                    index += 1
                    continue
                spec = self._specs[index]
                if "mona" in comps:
                    mona_dt = torch.bfloat16 if opt.mona_lite else torch.float32
                    state["mona_accel"] = torch.zeros_like(p, dtype=mona_dt)
                    state["mona_prev"] = torch.zeros_like(p, dtype=mona_dt)
                    state["mona_seen"] = torch.zeros((), dtype=torch.float32, device=_local(p).device)
                state["momentum"] = torch.zeros_like(p, dtype=dt)
                if "shampoo" in comps:
                    cfg = opt._kl_config(p)
                    init = kl_shampoo_init_state(spec.kshape, cfg, device=_local(p).device)
                    for f, t in zip(KLShampooState._fields, init):
                        if t is not None:
                            state["kl_" + f] = self._like_param(p, t)
                    if self.sharded and spec.owner == self.rank:
                        self._owned_kl[index] = KLShampooState(*(None if t is None else t.clone() for t in init))  # type: ignore[index]
                    state["kl_seed_k"] = -1  # -1: not seeded yet (the step seeds it)
                if "normuon" in comps and "ns5" in comps:
                    zeros = torch.zeros(p.shape[0], dtype=torch.float32, device=_local(p).device)
                    state["row_var"] = self._like_param(p, zeros)
                index += 1

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        self.bytes_communicated += t.numel() * t.element_size()
        dist.all_reduce(t, group=self.group)
        return t

    def _all_to_all(self, send: list[torch.Tensor], recv_sizes: list[int], dtype, device) -> list[torch.Tensor]:
        """One ``all_to_all_single``: ``send[r]`` (flat) goes to rank r; returns what each rank sent."""
        inp = torch.cat(send) if send else torch.empty(0, dtype=dtype, device=device)
        out = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
        self.bytes_communicated += (inp.numel() - send[self.rank].numel()) * inp.element_size()
        dist.all_to_all_single(out, inp, recv_sizes, [s.numel() for s in send], group=self.group)
        return list(out.split(recv_sizes))

    def reduce_global_scalars(
        self, opt: FusionOpt, grads: list[torch.Tensor], loss: Any, names: list[str],
        extra: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """The step's one all-reduce: ``[non-finite count, loss, *extra]`` summed over the group.

        ``grads`` are this rank's (local) gradients. Returns the global finite flag (0-d bool), the
        group-mean loss (``None`` without a loss) and the summed ``extra`` partial sums.
        """
        nonempty = [g for g in grads if g.numel()]
        device = grads[0].device
        bad = torch.zeros((), dtype=torch.float32, device=device)
        if nonempty:
            maxes = torch._foreach_norm(nonempty, float("inf"))
            bad = (~torch.isfinite(torch.stack([m.float() for m in maxes]))).sum().float()
        parts = [bad]
        if loss is not None:
            loss_t = torch.as_tensor(loss).detach().float().reshape(()).to(device)
            parts += [(~torch.isfinite(loss_t)).float(), torch.nan_to_num(loss_t, nan=0.0, posinf=0.0, neginf=0.0)]
        extra = extra or []
        vec = self._all_reduce(torch.stack(parts + [e.float().reshape(()) for e in extra]))
        n_bad = vec[0] + (vec[1] if loss is not None else 0.0)
        finite = n_bad == 0
        if opt.nonfinite == "raise" and not bool(finite):  # host sync only in "raise" mode
            local = [n for n, g in zip(names, grads) if g.numel() and not bool(torch.isfinite(g).all())]
            raise FloatingPointError(
                f"non-finite gradient(s) or loss on {int(n_bad)} of the group's tensors"
                + (f"; on this rank: {local}" if local else "")
            )
        mean_loss = vec[2] / self.world if loss is not None else None
        off = 3 if loss is not None else 1
        return finite, mean_loss, list(vec[off:])

    # ------------------------------------------------------------------ checkpoints
    def sync_state(self, opt: FusionOpt) -> None:
        """Write the owners' KL-Shampoo factors into the (row-sharded) optimizer state.

        A collective (every rank must call it; ``FusionOpt.state_dict()`` does)."""
        if not self.sharded or "shampoo" not in opt.components or self._owned_kl is None:
            return
        for index, spec in sorted(self._specs.items()):
            p = self._params[index]
            state = opt.state[p]
            owned = self._owned_kl.get(index)
            for f in KLShampooState._fields:
                key = "kl_" + f
                if key not in state:
                    continue
                cur = state[key]
                full = getattr(owned, f) if owned is not None else torch.empty(cur.shape, dtype=cur.dtype, device=_local(cur).device)
                self.bytes_communicated += full.numel() * full.element_size() * (self.rank == spec.owner)
                new = distribute_tensor(full, cur.device_mesh, list(cur.placements), src_data_rank=spec.owner)
                _local(cur).copy_(new.to_local())

    def pack_extra(self, sd: dict[str, Any], extra: dict[str, Any]) -> None:
        """Put the optimizer-wide state where DCP keeps it (the first parameter group)."""
        if sd["param_groups"]:
            sd["param_groups"][0]["fusion_extra"] = extra

    def after_load(self, opt: FusionOpt) -> None:
        """Forget the owners' KL copies: the next step gathers them from the loaded state."""
        self._owned_kl = None
        for g in opt.param_groups:
            g.pop("fusion_extra", None)

    def _gather_owned_kl(self, opt: FusionOpt) -> None:
        self._owned_kl = {}
        if "shampoo" not in opt.components:
            return
        for index, spec in sorted(self._specs.items()):
            state = opt.state[self._params[index]]
            fields = []
            for f in KLShampooState._fields:
                t = state.get("kl_" + f)
                fields.append(None if t is None else full_tensor(t))  # collective
                if t is not None:
                    self.bytes_communicated += _local(t).numel() * t.element_size() * (self.world - 1)
            if spec.owner == self.rank:
                self._owned_kl[index] = KLShampooState(*fields)

    # ------------------------------------------------------------------ the sharded step
    def step(self, opt: FusionOpt, items: list, loss: Any, use_polyak: bool) -> Any:
        """One FusionOpt step on FSDP2-sharded parameters (see the module docstring).

        ``items`` are ``FusionOpt._collect()``'s (group, parameter, name). The step is computed
        speculatively under this rank's own finiteness flag, into new tensors; the step's one
        all-reduce (non-finite count, loss, Polyak partial sums) comes last, and its global flag
        decides which of the old and new state values are kept (``torch.where``: exact either way).
        """
        from .optimizer import apply_update_, scalar_direction_  # optimizer imports us

        if [p for g in opt.param_groups for p in g["params"]] != self._params:
            raise RuntimeError("parameter groups changed after construction; a distributed FusionOpt "
                               "needs all parameters at construction (add_param_group is not supported)")
        if self._owned_kl is None:
            self._gather_owned_kl(opt)
        if not items:
            return loss
        index_of = {id(p): i for i, p in enumerate(self._params)}
        raw = [_local(p.grad) for _, p, _ in items]
        device = raw[0].device
        nonempty = [g for g in raw if g.numel()]
        local_ok = torch.ones((), dtype=torch.bool, device=device)
        if nonempty:
            local_ok = torch.isfinite(torch.stack([m.float() for m in torch._foreach_norm(nonempty, float("inf"))])).all()
        if loss is not None:
            local_ok = local_ok & torch.isfinite(torch.as_tensor(loss).detach().float().to(device)).all()
        lgate = local_ok.to(torch.float32)
        grads = [torch.where(local_ok, g, torch.zeros((), dtype=g.dtype, device=g.device)) for g in raw]
        commits: list[tuple[torch.Tensor, torch.Tensor]] = []  # (state tensor, its new value)
        kl_commits: list[tuple[int, KLShampooState]] = []

        spectral = [(grp, p, g, index_of[id(p)]) for (grp, p, _), g in zip(items, grads) if grp["group_type"] == "spectral"]
        updates = self._sharded_spectral(opt, spectral, lgate, commits, kl_commits)
        for (group, p, _), g in zip(items, grads):
            if group["group_type"] != "scalar":
                continue
            state = opt.state[p]
            spec = {"exp_avg_sq": _local(state["exp_avg_sq"]).clone(), "step": state["step"] + lgate}
            commits.append((_local(state["exp_avg_sq"]), spec["exp_avg_sq"]))
            if not opt.sf:
                spec["exp_avg"] = _local(state["exp_avg"]).clone()
                commits.append((_local(state["exp_avg"]), spec["exp_avg"]))
            updates.append((group, p, scalar_direction_(group, spec, g, lgate, opt.sf)))

        extra: list[torch.Tensor] = []
        if use_polyak:
            # partial sums over the local shards, completed by the all-reduce: ⟨g, U⟩ per group
            # (D_t = Σ_g η_g·⟨g, U_g⟩ once the clock has advanced) and I_t = ⟨g, z − y⟩
            gpos = {id(g): i for i, g in enumerate(opt.param_groups)}
            grad_of = {id(p): g for (_, p, _), g in zip(items, grads)}
            per_group = [torch.zeros((), device=device) for _ in opt.param_groups]
            for group, p, U in updates:
                per_group[gpos[id(group)]] = per_group[gpos[id(group)]] + torch.vdot(
                    grad_of[id(p)].flatten().float(), U.flatten().float())
            inner = torch.zeros((), device=device)
            for (_, p, _), g in zip(items, grads):
                z = _local(opt.state[p]["z"])
                inner = inner + torch.vdot(g.flatten().float(), (z - _local(p)).flatten().float())
            extra = per_group + [inner]
        finite, mean_loss, sums = self.reduce_global_scalars(opt, raw, loss, [n for *_, n in items], extra)

        # --- commit: the global flag picks new or old values (bit-identical to a gated update)
        gate = finite.to(torch.float32)
        opt._nonfinite_steps += 1.0 - gate
        for dst, new in commits:
            dst.copy_(torch.where(finite, new, dst))
        for index, new in kl_commits:
            old = self._owned_kl[index]  # type: ignore[index]
            self._owned_kl[index] = KLShampooState(*(  # type: ignore[index]
                n if n is None or o is None else torch.where(finite, n, o) for n, o in zip(new, old)))
        sched = {id(g): opt._schedule(g, gate) for g in opt.param_groups}
        for group, p, _ in items:
            state = opt.state[p]
            state["step"] += gate
            if state.get("kl_seed_k", 0) < 0 and group["group_type"] == "spectral":
                state["kl_seed_k"] = group["k"]  # the seed step (a skipped one too, as in one process)
        if use_polyak:
            decrease = sum((sched[id(g)][0] * s for g, s in zip(opt.param_groups, sums)), torch.zeros((), device=device))
            multiplier: torch.Tensor | float = opt._polyak.update(mean_loss, decrease, sums[-1], gate)
        else:
            multiplier = 1.0
            if mean_loss is not None:  # telemetry's loss EMA, as in the single-process step
                opt._polyak.observe_loss(mean_loss, gate)
        for group, p, U in updates:
            state = opt.state[p]
            lr_t, c = sched[id(group)]
            z, x = state.get("z"), state.get("x")
            apply_update_(group, _local(p), None if z is None else _local(z), None if x is None else _local(x),
                          U, lr_t, c, multiplier, gate, opt.sf)
        return loss

    def _sharded_spectral(self, opt: FusionOpt, spectral, gate, commits, kl_commits) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """Spectral directions of the local rows; new state values go to ``commits``/``kl_commits``."""
        from .optimizer import _kl_safe, momentum_direction_

        comps = opt.components
        use_mona, use_kl, use_ns = "mona" in comps, "shampoo" in comps, "ns5" in comps
        use_nm = "normuon" in comps and use_ns
        W, rank = self.world, self.rank
        if not spectral:
            return []
        device = spectral[0][1].grad.device
        wire = torch.float64 if any(p.dtype == torch.float64 for _, p, _, _ in spectral) else torch.float32
        # --- local elementwise part; build what each owner receives
        send: list[list[torch.Tensor]] = [[] for _ in range(W)]
        plan = []  # (group, p, spec, seeding, u dtype, g dtype)
        for group, p, g, index in spectral:
            spec = self._specs[index]
            state = opt.state[p]
            g_tilde = g
            if use_mona:
                g_tilde, accel, prev, seen = opt._mona_step(
                    g, _local(state["mona_accel"]), _local(state["mona_prev"]), state["mona_seen"], gate,
                    alpha=group["mona_alpha"], beta=group["mona_beta"],
                )
                commits += [(_local(state["mona_accel"]), accel), (_local(state["mona_prev"]), prev),
                            (state["mona_seen"], seen)]
            seeding = use_kl and state["kl_seed_k"] < 0
            parts = []
            u = None
            if not seeding:
                m_new = _local(state["momentum"]).clone()
                u = momentum_direction_(group, m_new, g_tilde, gate)
                commits.append((_local(state["momentum"]), m_new))
                parts.append(u.reshape(-1))
            if use_kl:
                parts.append(g.reshape(-1))
            if use_nm and not seeding:
                parts.append(_local(state["row_var"]))
            send[spec.owner].append(torch.cat([t.to(wire) for t in parts]) if parts else torch.empty(0, dtype=wire, device=device))
            plan.append((group, p, spec, seeding, None if u is None else u.dtype, g.dtype))

        def piece_len(spec: _Spec, seeding: bool, lo: int, hi: int) -> int:
            n_rows = hi - lo
            n = 0 if seeding else n_rows * spec.cols
            n += n_rows * spec.cols if use_kl else 0
            n += n_rows if (use_nm and not seeding) else 0
            return n

        recv_sizes = [0] * W
        for _, _, spec, seeding, _, _ in plan:
            if spec.owner == rank:
                for s, (lo, hi) in enumerate(row_ranges(spec.rows, W)):
                    recv_sizes[s] += piece_len(spec, seeding, lo, hi)
        flat_send = [torch.cat(x) if x else torch.empty(0, dtype=wire, device=device) for x in send]
        received = self._all_to_all(flat_send, recv_sizes, wire, device)
        offsets = [0] * W

        # --- owner: reassemble full matrices, KL-Shampoo, batched NS, NorMuon (the optimizer's own
        # functions on the whole matrices)
        owned = []  # (group, p, spec, direct or None, row_var_full or None)
        buckets: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for group, p, spec, seeding, u_dtype, g_dtype in plan:
            if spec.owner != rank:
                continue
            us, gs, vs = [], [], []
            for s, (lo, hi) in enumerate(row_ranges(spec.rows, W)):
                n_rows = hi - lo
                buf, o = received[s], offsets[s]
                if not seeding:
                    us.append(buf[o:o + n_rows * spec.cols].view(n_rows, spec.cols))
                    o += n_rows * spec.cols
                if use_kl:
                    gs.append(buf[o:o + n_rows * spec.cols].view(n_rows, spec.cols))
                    o += n_rows * spec.cols
                if use_nm and not seeding:
                    vs.append(buf[o:o + n_rows])
                    o += n_rows
                offsets[s] = o
            state = opt.state[p]
            if seeding:
                cfg = opt._kl_config(p)
                g_full = _kl_safe(torch.cat(gs).to(g_dtype)).reshape(spec.kshape)
                kl_commits.append((spec.index, opt._kl_seed(g_full, self._owned_kl[spec.index], cfg, gate)))  # type: ignore[index]
                continue
            u_full = torch.cat(us).to(u_dtype)
            if use_kl:
                cfg = opt._kl_config(p)
                # the clock advances after the all-reduce: this step is group["k"] + 1
                refresh = kl_shampoo_refresh_due(group["k"] + 1 - state["kl_seed_k"], cfg)
                g_full = _kl_safe(torch.cat(gs).to(g_dtype)).reshape(spec.kshape)
                u_full, new = opt._kl_step(g_full, u_full.reshape(spec.kshape), self._owned_kl[spec.index], cfg, gate, refresh=refresh)  # type: ignore[index]
                kl_commits.append((spec.index, new))
            row_var = torch.cat(vs) if use_nm else None
            if not use_ns:
                owned.append((group, p, spec, u_full.reshape(spec.rows, spec.cols), None))
                continue
            k = group["ns_split"]
            mat = u_full.reshape(k, spec.rows // k, -1)
            a, b = mat.shape[-2:]
            buckets.setdefault((a, b, *opt._ns_key(group, device)), []).append((len(owned), mat))
            owned.append((group, p, spec, None, row_var))
        ortho = opt._orthogonalize_buckets(buckets, len(owned))
        self.ns_matrices += sum(x.shape[0] for items in buckets.values() for _, x in items)

        back: list[list[torch.Tensor]] = [[] for _ in range(W)]
        for (group, _, spec, direct, row_var), o in zip(owned, ortho):
            if direct is not None:
                U = direct
            else:
                k = group["ns_split"]
                U = opt._finish_spectral(group, o.reshape(spec.rows, -1), (spec.rows // k, spec.cols), row_var, gate)
            U = U.reshape(spec.rows, spec.cols)
            # the whole-matrix overflow check of the single-process step: a non-finite direction
            # is dropped for the whole parameter, so every rank must see it as non-finite
            U = torch.where(torch.isfinite(U).all(), U, torch.full_like(U, float("nan")))
            for s, (lo, hi) in enumerate(row_ranges(spec.rows, W)):
                parts = [U[lo:hi].reshape(-1).to(wire)]
                if use_nm and direct is None:
                    parts.append(row_var[lo:hi].to(wire))
                back[s].append(torch.cat(parts))

        # --- return each rank its rows
        recv_back = [0] * W
        for _, _, spec, seeding, _, _ in plan:
            if seeding:
                continue
            lo, hi = row_ranges(spec.rows, W)[rank]
            recv_back[spec.owner] += (hi - lo) * spec.cols + ((hi - lo) if use_nm else 0)
        flat_back = [torch.cat(x) if x else torch.empty(0, dtype=wire, device=device) for x in back]
        returned = self._all_to_all(flat_back, recv_back, wire, device)
        offsets = [0] * W
        out = []
        for group, p, spec, seeding, u_dtype, _ in plan:
            state = opt.state[p]
            if seeding:
                continue
            lo, hi = row_ranges(spec.rows, W)[rank]
            n = (hi - lo) * spec.cols
            buf, o = returned[spec.owner], offsets[spec.owner]
            U = buf[o:o + n].to(torch.float32 if use_ns else u_dtype)  # the single-process dtypes
            o += n
            if use_nm:
                commits.append((_local(state["row_var"]), buf[o:o + hi - lo].to(torch.float32)))
                o += hi - lo
            offsets[spec.owner] = o
            out.append((group, p, U.reshape(_local(p).shape)))
        return out


class _SplitOrthogonalizer:
    """Replicated (DDP) Newton–Schulz: rank r orthogonalises the r-th contiguous block of the batch,
    then one all-gather gives every rank every result (bit-identical to one process doing all:
    each matrix is normalised and iterated on its own)."""

    def __init__(self, base, ctx: DistributedFusion) -> None:
        self.base, self.ctx = base, ctx

    def __call__(self, X: torch.Tensor, **kw: Any) -> torch.Tensor:
        ctx = self.ctx
        n, W = X.shape[0], ctx.world
        chunk = -(-n // W)
        lo, hi = min(n, ctx.rank * chunk), min(n, (ctx.rank + 1) * chunk)
        mine = torch.zeros((chunk, *X.shape[1:]), dtype=torch.float32, device=X.device)
        if hi > lo:
            mine[: hi - lo] = self.base(X[lo:hi], **kw)
            ctx.ns_matrices += hi - lo
        gathered = [torch.empty_like(mine) for _ in range(W)]
        ctx.bytes_communicated += mine.numel() * mine.element_size() * (W - 1)
        dist.all_gather(gathered, mine, group=ctx.group)
        return torch.cat(gathered)[:n]


def attach_distributed(opt: FusionOpt, process_group: Any = None) -> DistributedFusion | None:
    """Decide the optimizer's distributed mode and set it up; ``None`` for a single process.

    Raises ``ValueError`` for layouts FusionOpt cannot orthogonalise correctly: DTensors mixed with
    plain tensors, DTensors not sharded ``(Shard(0),)`` on a 1-D mesh (tensor parallelism, HSDP),
    parameters on different meshes, or a ``process_group`` that is not the DTensors' mesh group.
    """
    params = [(g, p) for g in opt.param_groups for p in g["params"]]
    dts = [p for _, p in params if is_dtensor(p)]
    if not dts:
        if process_group is None:
            return None
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("process_group was given but torch.distributed is not initialised "
                             "(call torch.distributed.init_process_group first)")
        return DistributedFusion(opt, "replicated", process_group)
    names = {id(p): n for g in opt.param_groups for n, p in zip(g.get("param_names") or [], g["params"])}

    def label(p):
        return names.get(id(p), f"shape {tuple(p.shape)}")

    if len(dts) != len(params):
        plain = [label(p) for _, p in params if not is_dtensor(p)]
        raise ValueError(
            "FusionOpt got a mix of DTensor (FSDP2-sharded) and plain parameters "
            f"(plain: {plain[:5]}); shard the whole model with fully_shard, or give the plain "
            "parameters their own optimizer"
        )
    mesh = dts[0].device_mesh
    for p in dts:
        if p.device_mesh.ndim != 1:
            raise ValueError(
                f"parameter {label(p)} lives on a {p.device_mesh.ndim}-D device mesh; FusionOpt "
                "supports 1-D meshes (FSDP2 or DDP), not HSDP or tensor parallel meshes"
            )
        if tuple(p.placements) != (Shard(0),):
            raise ValueError(
                f"parameter {label(p)} has placements {tuple(p.placements)}; FusionOpt needs "
                "(Shard(0),) as fully_shard makes them (tensor parallelism, Shard(d) with d != 0, "
                "and Replicate are not supported)"
            )
        if p.device_mesh != mesh:
            raise ValueError(f"parameter {label(p)} is on a different device mesh than the others")
    group = mesh.get_group()
    if process_group is not None and process_group is not group:
        raise ValueError("process_group is for replicated (DDP) parameters; DTensor parameters "
                         "communicate over their own device mesh (pass process_group=None)")
    for _, p in params:
        local = p.to_local()
        lo, hi = row_ranges(p.shape[0], mesh.size())[mesh.get_local_rank()]
        if local.shape[0] != hi - lo or tuple(local.shape[1:]) != tuple(p.shape[1:]):
            raise ValueError(
                f"parameter {label(p)}: local shard of shape {tuple(local.shape)} is not the "
                f"torch.chunk row shard of {tuple(p.shape)} FusionOpt expects (rows {lo}:{hi})"
            )
    return DistributedFusion(opt, "sharded", group, mesh)

