"""Drive a `ContextMemory` chunk by chunk without a model and check it against `policy_reference`.

Keys and values are synthetic and tiny (T=2 tokens, H=1 head, D=4): frame f of layer l written on pass
`tag` (a noisy pass index, "commit", or a recache tag) holds, for token t,

    key   = direction + (-1)^t * e,     e = (f + 1, l + 1, pass id, batch item + 1)
    value = 3 * key - 7 * (-1)^t

so the chunk's mean key over its tokens is exactly `direction` (chosen by the test to control the
surprisal signal), while every (frame, layer, pass) has a distinct content from which the frame index can
be read back: frame = (key[token 0] - key[token 1])[0] / 2 - 1.

The rotation handed to the memory is the identity (keys flattened) and records the positions it is asked
for, so `view` shows exactly which stored contents are attended and in which order. Every pass also runs
what the model runs, `begin_pass(commit).keys_values(layer, k, k_rot, v)` (which hands the pass's keys to the memory), and
checks that attention over what it returns (slot tensors and key mask in the library's slots view)
equals attention over the plan-order view plus the chunk.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch
from gather_reference import GatherMemory
from policy_reference import COMMIT, Reference

from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.spec import make_spec
from contextforcing.model.attention import attention

C, T, H, D = 3, 2, 1, 4
_SIGN = torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None]  # token 0: +e, token 1: -e


def default_direction(chunk, tag, layer, item):
    return [10.0, 0.0, 0.0, 0.0]


SCENES = [[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]]


def noisy_random(chunk, tag, layer, item):
    """Noisy passes point anywhere; with promote_on=commit they must not matter."""
    rng = random.Random(f"{chunk}/{tag}/{layer}/{item}")  # string seeds are stable across processes
    return [rng.uniform(-10, 10) for _ in range(4)]


def _scene_sequence(seed, change_prob, chunks):
    rng = random.Random(seed)
    scenes, current = [], 0
    for _ in range(chunks + 1):
        if rng.random() < change_prob:
            current = (current + rng.choice([1, 2])) % 3
        scenes.append(current)
    return scenes


def scene_directions(seed=1, change_prob=0.4, chunks=200, layered=False):
    """Commit-pass mean key: one of three orthogonal directions, changing at random chunks. `layered`: each
    layer's scenes change at its own chunks (so a rule reading one layer decides unlike one pooling all)."""
    per_layer = {}

    def direction(chunk, tag, layer, item):
        if tag != COMMIT:
            return noisy_random(chunk, tag, layer, item)
        key = layer if layered else 0
        if key not in per_layer:
            per_layer[key] = _scene_sequence(seed + 1000 * key, change_prob, chunks)
        return SCENES[per_layer[key][chunk]]

    return direction


class Harness:
    def __init__(
        self,
        policy,
        options=None,
        *,
        layers=2,
        batch=1,
        chunks=200,
        direction=default_direction,
        noisy_passes=1,
        check_values=True,
        view_mode="slots",
    ):
        self.policy, self.options = policy, dict(options or {})
        self.layers, self.batch, self.chunks = layers, batch, chunks
        self.direction, self.noisy_passes, self.check_values = direction, noisy_passes, check_values
        self.ref = Reference(policy, self.options, layers=layers, chunk=C)
        self.rotation_calls: list[list[int]] = []
        layout = MemoryLayout(num_layers=layers, tokens_per_frame=T, num_heads=H, head_dim=D, chunk_frames=C)
        memory_class = GatherMemory if view_mode == "gather" else ContextMemory
        self.mem = memory_class(
            make_spec(policy, self.options), layout, key_rotation=self._rotate, batch=batch, max_frames=chunks * C
        )
        self.query = torch.randn(batch, C * T, H, D, generator=torch.Generator().manual_seed(0)) * 1e-2
        self.store: dict = {}  # (layer, frame, tag) -> K and V stacked [2, B, T, H, D], float64
        self.pass_ids: dict = {}
        self.chunk = 0
        self._first_view: dict = {}
        self.promoted: list[list[int]] = [[] for _ in range(layers)]  # chunks the library promoted, per layer
        self.context_views = 0  # (chunk or recache, layer) pairs with a non-empty context
        self.max_position = -1
        self.traces: list[dict] = []

    # -- synthetic tensors -------------------------------------------------------------------------
    def _rotate(self, keys, positions):
        self.rotation_calls.append(list(positions))
        return keys.flatten(1, 2)

    def _pass_id(self, tag):
        return self.pass_ids.setdefault(tag, len(self.pass_ids) + 1)

    def make_kv(self, frames, tag, layer, chunk):
        """K, V [B, len(frames)*T, H, D] for `frames`, recorded in the store."""
        pid = float(self._pass_id(tag))
        n = len(frames)
        d = torch.tensor([self.direction(chunk, tag, layer, b) for b in range(self.batch)], dtype=torch.float64)
        e = torch.tensor(
            [[[f + 1.0, layer + 1.0, pid, b + 1.0] for f in frames] for b in range(self.batch)], dtype=torch.float64
        )
        k = d[:, None, None, :] + _SIGN * e[:, :, None, :]  # [B, F, T, D]
        # What the memory receives is float32: keep the reference copy exactly that, in float64.
        kv32 = torch.stack([k, 3 * k - 7 * _SIGN]).reshape(2, self.batch, n, T, H, D).float()
        kv64 = kv32.double()
        for i, f in enumerate(frames):
            self.store[(layer, f, tag)] = kv64[:, :, i]  # [2 (K, V), B, T, H, D]
        k32, v32 = kv32.reshape(2, self.batch, n * T, H, D).unbind(0)
        return k32, v32

    def expected(self, entries, layer):
        """The K, V [B, n*T, H, D] the memory must return for reference entries (tier, frame, content)."""
        ks, vs = [], []
        for _, _, content in entries:
            if len(content) == 1 and next(iter(content.values())) == 1.0:
                k, v = self.store[(layer, *next(iter(content)))]
            else:  # an EMA mixture of several written contents
                weights = torch.tensor(list(content.values()), dtype=torch.float64)
                parts = torch.stack([self.store[(layer, *src)] for src in content])  # [n, 2, B, T, H, D]
                k, v = torch.tensordot(weights, parts, dims=1)
            ks.append(k)
            vs.append(v)
        shape = (self.batch, len(entries) * T, H, D)
        return torch.stack(ks, 1).reshape(shape), torch.stack(vs, 1).reshape(shape)

    @staticmethod
    def decode_frames(keys):
        """Frame index of each attended frame, read back from the keys [B, n*T, H, D] (batch item 0)."""
        k = keys[0].reshape(-1, T, H, D)
        return ((k[:, 0, 0, 0] - k[:, 1, 0, 0]) / 2 - 1).round().long().tolist()

    def check_view(self, layer, entries, where, first):
        """The plan-order view of `layer` against the reference entries (contents, frames, order)."""
        out = self.mem.view(layer)
        if not entries:
            assert out is None, f"{where}: layer {layer} attends nothing, view returned a tensor"
            return None
        assert out is not None, f"{where}: layer {layer} view is None, expected {len(entries)} frames"
        keys, values = out
        if (
            not first
        ):  # the gather reference keeps its copies; slots are read anew, the chunk's writes must not touch them
            kept = self._first_view[layer]
            same = out is kept if isinstance(self.mem, GatherMemory) else all(map(torch.equal, out, kept))
            assert same, f"{where}: layer {layer} view changed within the chunk"
            return out
        self._first_view[layer] = out
        if not self.check_values:
            return out
        k, v = self.expected(entries, layer)
        assert keys.shape == k.shape, f"{where}: layer {layer} view shape {tuple(keys.shape)} != {tuple(k.shape)}"
        ema = self.policy == "ema_sink"
        frames = [f for _, f, _ in entries]
        if not ema:
            assert self.decode_frames(keys) == frames, f"{where}: layer {layer} attended frames differ"
        tol = dict(rtol=1e-5, atol=2e-3) if ema else dict(rtol=0, atol=0)
        assert torch.allclose(keys.double(), k, **tol), f"{where}: layer {layer} keys differ from the reference"
        assert torch.allclose(values.double(), v, **tol), f"{where}: layer {layer} values differ from the reference"
        return out

    def check_attend(self, layer, view, k, v, where):
        """What the model attends (the pass's `keys_values`, which also hands over k, v) is the view plus this
        pass's chunk k, v (the identity rotation: rotated keys are k)."""
        with torch.no_grad():  # inference: the slots view hands over its slot tensors only without autograd
            keys, values, mask = self.memory_pass.keys_values(layer, k, k, v)
        q = self.query[:, : k.shape[1]]
        got = attention(q, keys, values, key_mask=mask)  # no mask unless the memory reads at fixed shapes
        ref_k, ref_v = (k, v) if view is None else (torch.cat([view[0], k], 1), torch.cat([view[1], v], 1))
        want = attention(q, ref_k, ref_v)
        attended = keys.shape[1] if mask is None else int(mask.sum())
        assert attended == ref_k.shape[1], f"{where}: layer {layer} attends {attended} keys, expected {ref_k.shape[1]}"
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-3), f"{where}: layer {layer} attention differs"

    def check_rotations(self, mark, plans, where):
        """Since `mark`: one rotation per layer with context, at the plan's positions, in layer order."""
        expected = [plan.positions for plan in plans if plan.entries]
        assert self.rotation_calls[mark:] == expected, f"{where}: rotations differ from once per layer with context"
        self.context_views += len(expected)

    # -- driving -------------------------------------------------------------------------------------
    def key_lists(self, k):
        """[B, F*T, H, D] -> [batch][token][H*D] plain floats for the reference."""
        return k.double().flatten(2).tolist()

    def step(self):
        chunk, start = self.chunk, self.chunk * C
        where = f"{self.policy} {self.options} chunk {chunk}"
        mark = len(self.rotation_calls)
        plan = self.mem.begin_chunk(start, C)
        self.ref.begin_chunk()
        trace = plan.to_json()
        self.traces.append(trace)
        assert trace == self.ref.trace(chunk, start), f"{where}: trace differs"
        plans = [self.ref.plan(start, layer) for layer in range(self.layers)]
        assert list(plan.current_positions) == plans[0].current, f"{where}: current positions differ"
        for plan in plans:
            self.max_position = max([self.max_position, *plan.positions, *plan.current])
        frames = list(range(start, start + C))
        tags = list(range(self.noisy_passes)) + [COMMIT]
        for tag in tags:
            keys = {}
            self.memory_pass = self.mem.begin_pass(commit=tag == COMMIT)
            for layer in range(self.layers):
                view = self.check_view(layer, plans[layer].entries, f"{where} pass {tag}", first=tag == tags[0])
                k, v = self.make_kv(frames, tag, layer, chunk)
                self.check_attend(layer, view, k, v, f"{where} pass {tag}")
                keys[layer] = self.key_lists(k)
            self.ref.on_pass(chunk, start, tag, keys)
            if tag == tags[0]:  # rotated once per chunk (when planned, or on the first view), never per pass
                self.check_rotations(mark, plans, where)
                mark = len(self.rotation_calls)
        assert len(self.rotation_calls) == mark, f"{where}: keys rotated again on a later pass"
        slow_before = [self.mem.tiers(layer)["slow"] for layer in range(self.layers)]
        self.mem.commit()
        self.ref.commit(chunk, start)
        for layer in range(self.layers):
            slow = self.mem.tiers(layer)["slow"]
            if slow != slow_before[layer] and slow and start <= slow[-1] < start + C:
                self.promoted[layer].append(chunk)  # the library promoted this chunk in this layer
        self.chunk += 1

    def recache(self):
        """Prompt switch: re-encode the fast window before the next chunk; checks frames and positions."""
        start = self.chunk * C
        tag = f"recache@{start}"
        where = f"{self.policy} recache before {start}"
        tiers_before = [self.mem.tiers(layer) for layer in range(self.layers)]
        mark = len(self.rotation_calls)
        frames = self.mem.begin_recache(start)
        ref_frames, per_layer = self.ref.recache(start, tag)
        assert frames == ref_frames, f"{where}: recached frames differ"
        assert list(self.mem.plan.current_positions) == per_layer[0][2], f"{where}: recache positions differ"
        if frames:
            self.memory_pass = self.mem.begin_pass(commit=True)
        for layer in range(self.layers if frames else 0):
            view = self.check_view(layer, per_layer[layer][0], where, first=True)
            k, v = self.make_kv(frames, tag, layer, self.chunk)
            self.check_attend(layer, view, k, v, where)
        # nothing to re-encode: no pass runs, so nothing may be rotated for it
        plans = [SimpleNamespace(entries=e if frames else [], positions=p) for e, p, _ in per_layer]
        self.check_rotations(mark, plans, where)
        self.mem.commit()
        self.ref.recached(frames, tag)
        assert [self.mem.tiers(layer) for layer in range(self.layers)] == tiers_before, f"{where}: tiers changed"
        return frames

    def flush(self):
        self.mem.flush()
        self.ref.flush()

    def run(self, chunks=None, events=None):
        events = events or {}
        for _ in range(self.chunks if chunks is None else chunks):
            for event in events.get(self.chunk, ()):
                getattr(self, event)()
            self.step()
        return self
