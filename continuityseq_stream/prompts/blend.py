"""Prompt blends: a weighted mix of prompts and its text embeddings (`PromptBlender` caches each
prompt's embedding; a blend is the weighted sum). Nothing here imports torch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

from ..errors import ConfigError, ContinuitySeqError

#: prompts weighing no more than this in a blend are left out of it
_MIN_WEIGHT = 1e-12


# ------------------------------------------------------------------------------------------------
# blends
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlendTerm:
    """One prompt of a blend with its weight; negative None means the run's negative prompt."""

    prompt: str
    negative: Optional[str]
    weight: float


@dataclass(frozen=True)
class PromptBlend:
    """A convex mix of prompts: the text embeddings of a chunk are sum(weight * E(prompt)).

    Terms keep their order (older prompt first), weights are > 0 and sum to 1; equal
    (prompt, negative) pairs are merged. Build with `single` or `pair`.
    """

    terms: Tuple[BlendTerm, ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("PromptBlend needs at least one term")
        total = sum(t.weight for t in self.terms)
        if any(t.weight <= 0 for t in self.terms) or abs(total - 1.0) > 1e-6:
            raise ValueError(f"PromptBlend weights must be > 0 and sum to 1, got {[t.weight for t in self.terms]}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def single(cls, prompt: str, negative: Optional[str] = None) -> "PromptBlend":
        return cls((BlendTerm(prompt, negative, 1.0),))

    @classmethod
    def pair(
        cls, a: str, b: str, weight: float, negative_a: Optional[str] = None, negative_b: Optional[str] = None
    ) -> "PromptBlend":
        """(1 - weight) * a + weight * b."""
        return cls.from_weighted([(a, negative_a, 1.0 - weight), (b, negative_b, weight)])

    @classmethod
    def from_weighted(cls, items: Iterable[Tuple[str, Optional[str], float]]) -> "PromptBlend":
        """Merge equal (prompt, negative) pairs, drop zero weights, keep first-seen order."""
        merged: "OrderedDict[Tuple[str, Optional[str]], float]" = OrderedDict()
        for prompt, negative, weight in items:
            if weight <= _MIN_WEIGHT:
                continue
            merged[(prompt, negative)] = merged.get((prompt, negative), 0.0) + float(weight)
        total = sum(merged.values())
        return cls(tuple(BlendTerm(p, n, w / total) for (p, n), w in merged.items()))

    # -- derived ------------------------------------------------------------------------------
    def mix_toward(self, target: BlendTerm, weight: float) -> "PromptBlend":
        """(1 - weight) * self + weight * target."""
        items = [(t.prompt, t.negative, t.weight * (1.0 - weight)) for t in self.terms]
        items.append((target.prompt, target.negative, weight))
        return PromptBlend.from_weighted(items)

    def with_negatives(self, resolve: Callable[[BlendTerm], str]) -> "PromptBlend":
        return PromptBlend.from_weighted((t.prompt, resolve(t), t.weight) for t in self.terms)

    @property
    def prompts(self) -> Tuple[str, ...]:
        return tuple(t.prompt for t in self.terms)

    @property
    def dominant(self) -> str:
        """The prompt with the largest weight (the newest one on a tie)."""
        best = self.terms[0]
        for t in self.terms[1:]:
            if t.weight >= best.weight - 1e-12:
                best = t
        return best.prompt

    @property
    def weight_by_prompt(self) -> dict:
        out: dict = {}
        for t in self.terms:
            out[t.prompt] = out.get(t.prompt, 0.0) + t.weight
        return out

    @property
    def description(self) -> str:
        """What `Chunk.prompt` records: the prompt, or `a (75%) + b (25%)` for a mix."""
        if len(self.terms) == 1:
            return self.terms[0].prompt
        return " + ".join(f"{t.prompt} ({t.weight:.0%})" for t in self.terms)


class PromptBlender:
    """Text embeddings of a blend, computing each prompt's embeddings only once.

    `encode(prompt) -> Tensor` is the pipeline's prompt encoder (e.g. CLIP last hidden state
    [1, 77, 1024]). Results are kept in an LRU cache of `cache_size` prompts so a never-ending run
    with many live prompts stays bounded. Negatives of None are encoded as `default_negative`.
    """

    def __init__(self, encode: Callable[[str], Any], cache_size: int = 64, default_negative: str = "") -> None:
        if not callable(encode):
            raise TypeError("PromptBlender needs a callable encode(prompt) -> Tensor")
        if not isinstance(cache_size, int) or cache_size < 2:
            raise ConfigError(f"PromptBlender cache_size: got {cache_size!r}; use at least 2 (a blend needs two prompts)")
        self._encode = encode
        self._cache: "OrderedDict[str, Any]" = OrderedDict()
        self._cache_size = cache_size
        self.default_negative = default_negative
        #: how many times `encode` ran (tests and status use it)
        self.encode_calls = 0

    def encode(self, prompt: str) -> Any:
        """Embeddings of one prompt, from the cache when possible."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        value = self._encode(prompt)
        self.encode_calls += 1
        self._cache[prompt] = value
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def mix(self, weighted: Sequence[Tuple[str, float]]) -> Any:
        """sum(weight * E(prompt)); a single prompt returns its cached tensor unchanged."""
        if len(weighted) == 1:
            return self.encode(weighted[0][0])
        tensors = [self.encode(p) for p, _ in weighted]
        shape = getattr(tensors[0], "shape", None)
        for (p, _), t in zip(weighted, tensors):
            if getattr(t, "shape", None) != shape:
                raise ContinuitySeqError(
                    f"cannot blend prompt {p!r}: its embeddings have shape {tuple(t.shape)}, others {tuple(shape)}; "
                    f"the encoder must pad every prompt to the same length"
                )
        out = tensors[0] * weighted[0][1]
        for t, (_, w) in zip(tensors[1:], weighted[1:]):
            out = out + t * w
        return out

    def __call__(self, blend: PromptBlend) -> Tuple[Any, Any]:
        """(conditional, unconditional) embeddings of a blend; the negatives mix with the same weights."""
        cond = self.mix([(t.prompt, t.weight) for t in blend.terms])
        neg: "OrderedDict[str, float]" = OrderedDict()
        for t in blend.terms:
            n = self.default_negative if t.negative is None else t.negative
            neg[n] = neg.get(n, 0.0) + t.weight
        uncond = self.mix(list(neg.items()))
        return cond, uncond
