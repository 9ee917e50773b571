"""Drive a `ContextMemory` chunk by chunk without a model and check it against `policy_reference`.

Keys and values are synthetic and tiny (T=2 tokens, H=1 head, D=4): frame f of layer l written on pass
`tag` (a noisy pass index, "commit", or a recache tag) holds, for token t,

    key   = direction + (-1)^t * e,     e = (f + 1, l + 1, pass id, batch item + 1)
    value = 3 * key - 7 * (-1)^t

so the chunk's mean key over its tokens is exactly `direction` (chosen by the test to control the
surprisal signal), while every (frame, layer, pass) has a distinct content from which the frame index can
be read back: frame = (key[token 0] - key[token 1])[0] / 2 - 1.

The rotation handed to the memory is the identity (keys flattened) and records the positions it is asked
for, so `view` shows exactly which stored contents are attended and in which order.
"""

from __future__ import annotations

import random

import torch

from contextforcing.memory.context import ContextMemory, MemoryLayout
from contextforcing.memory.policies import make_spec
from policy_reference import COMMIT, Reference

C, T, H, D = 3, 2, 1, 4
_SIGN = torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None]  # token 0: +e, token 1: -e


def default_direction(chunk, tag, layer, item):
    return [10.0, 0.0, 0.0, 0.0]


SCENES = [[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]]


def noisy_random(chunk, tag, layer, item):
    """Noisy passes point anywhere; with promote_on=commit they must not matter."""
    rng = random.Random(f"{chunk}/{tag}/{layer}/{item}")  # string seeds are stable across processes
    return [rng.uniform(-10, 10) for _ in range(4)]


def scene_directions(seed=1, change_prob=0.4, chunks=200):
    """Commit-pass mean key: one of three orthogonal directions, changing at random chunks."""
    rng = random.Random(seed)
    scenes, current = [], 0
    for _ in range(chunks + 1):
        if rng.random() < change_prob:
            current = (current + rng.choice([1, 2])) % 3
        scenes.append(current)

    def direction(chunk, tag, layer, item):
        if tag != COMMIT:
            return noisy_random(chunk, tag, layer, item)
        return SCENES[scenes[chunk]]

    return direction


class Harness:
    def __init__(self, policy, options=None, *, layers=2, batch=1, chunks=200, direction=default_direction,
                 noisy_passes=1, check_values=True):
        self.policy, self.options = policy, dict(options or {})
        self.layers, self.batch, self.chunks = layers, batch, chunks
        self.direction, self.noisy_passes, self.check_values = direction, noisy_passes, check_values
        self.ref = Reference(policy, self.options, layers=layers, chunk=C)
        self.rotation_calls: list[list[int]] = []
        layout = MemoryLayout(num_layers=layers, tokens_per_frame=T, num_heads=H, head_dim=D, chunk_frames=C)
        self.mem = ContextMemory(make_spec(policy, self.options), layout, key_rotation=self._rotate,
                                 batch=batch, max_frames=chunks * C)
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
        e = torch.tensor([[[f + 1.0, layer + 1.0, pid, b + 1.0] for f in frames] for b in range(self.batch)],
                         dtype=torch.float64)
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

    def check_view(self, layer, entries, positions, where, first):
        rotations_before = len(self.rotation_calls)
        out = self.mem.view(layer)
        new_rotations = len(self.rotation_calls) - rotations_before
        if not entries:
            assert out is None, f"{where}: layer {layer} attends nothing, view returned a tensor"
            assert new_rotations == 0
            return
        assert out is not None, f"{where}: layer {layer} view is None, expected {len(entries)} frames"
        keys, values = out
        # Cached keys are rotated once per chunk per layer (first view), then reused by every pass.
        assert new_rotations == (1 if first else 0), f"{where}: layer {layer} rotated {new_rotations} times"
        if not first:
            assert out is self._first_view[layer], f"{where}: layer {layer} view changed within the chunk"
            return
        self._first_view[layer] = out
        assert self.rotation_calls[-1] == positions, f"{where}: layer {layer} rotated at wrong positions"
        self.context_views += 1
        if not self.check_values:
            return
        k, v = self.expected(entries, layer)
        assert keys.shape == k.shape, f"{where}: layer {layer} view shape {tuple(keys.shape)} != {tuple(k.shape)}"
        ema = self.policy == "ema_sink"
        frames = [f for _, f, _ in entries]
        if not ema:
            assert self.decode_frames(keys) == frames, f"{where}: layer {layer} attended frames differ"
        tol = dict(rtol=1e-5, atol=2e-3) if ema else dict(rtol=0, atol=0)
        assert torch.allclose(keys.double(), k, **tol), f"{where}: layer {layer} keys differ from the reference"
        assert torch.allclose(values.double(), v, **tol), f"{where}: layer {layer} values differ from the reference"

    # -- driving -------------------------------------------------------------------------------------
    def key_lists(self, k):
        """[B, F*T, H, D] -> [batch][token][H*D] plain floats for the reference."""
        return k.double().flatten(2).tolist()

    def step(self):
        chunk, start = self.chunk, self.chunk * C
        where = f"{self.policy} {self.options} chunk {chunk}"
        self.mem.begin_chunk(start, C)
        self.ref.begin_chunk()
        trace = self.mem.trace[-1]
        self.traces.append(trace)
        assert trace == self.ref.trace(chunk, start), f"{where}: trace differs"
        plans = [self.ref.plan(start, layer) for layer in range(self.layers)]
        assert self.mem.current_positions == plans[0].current, f"{where}: current positions differ"
        for plan in plans:
            self.max_position = max([self.max_position, *plan.positions, *plan.current])
        frames = list(range(start, start + C))
        tags = list(range(self.noisy_passes)) + [COMMIT]
        for tag in tags:
            keys = {}
            for layer in range(self.layers):
                self.check_view(layer, plans[layer].entries, plans[layer].positions, f"{where} pass {tag}",
                                first=tag == tags[0])
                k, v = self.make_kv(frames, tag, layer, chunk)
                keys[layer] = self.key_lists(k)
                self.mem.write(layer, k, v, commit=tag == COMMIT)
            self.ref.on_pass(chunk, start, tag, keys)
        slow_before = [self.mem.tiers(layer)["slow"] for layer in range(self.layers)]
        self.mem.commit()
        self.ref.commit(chunk, start)
        for layer in range(self.layers):
            slow = self.mem.tiers(layer)["slow"]
            if slow != slow_before[layer] and slow[-1:] == [start]:
                self.promoted[layer].append(chunk)  # the library promoted this chunk in this layer
        self.chunk += 1

    def recache(self):
        """Prompt switch: re-encode the fast window before the next chunk; checks frames and positions."""
        start = self.chunk * C
        tag = f"recache@{start}"
        where = f"{self.policy} recache before {start}"
        tiers_before = [self.mem.tiers(layer) for layer in range(self.layers)]
        frames = self.mem.begin_recache(start)
        ref_frames, per_layer = self.ref.recache(start, tag)
        assert frames == ref_frames, f"{where}: recached frames differ"
        assert self.mem.current_positions == per_layer[0][2], f"{where}: recache positions differ"
        if frames:
            for layer in range(self.layers):
                entries, positions, _ = per_layer[layer]
                self.check_view(layer, entries, positions, where, first=True)
                k, v = self.make_kv(frames, tag, layer, self.chunk)
                self.mem.write(layer, k, v, commit=True)
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
