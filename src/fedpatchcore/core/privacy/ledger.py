"""The persistent, append-only privacy ledger of a site: every release of the same images composes.

One file per site, ``<ledger_dir>/<site>.jsonl``, one JSON object per line, only ever appended:

* ``{"kind": "images", "id": <sha256 of the sorted keys>, "keys": [...]}``: an image set,
  written once per distinct set (the images a release covered, by their identity: the key);
* ``{"kind": "release", "id", "time", "site", "label", "images": <image set id>,
  "mechanisms": [{"name", "noise_multiplier", "sample_rate", "steps"}], "private": bool}``:
  one release. ``noise_multiplier`` is per *image*: σ over what replacing one image can move
  the release (a ``patch``-unit release of m vectors per image records z/√m).

Before a release, :meth:`SiteLedger.charge` composes, for every image the release covers,
everything any site of the ledger folder recorded about that image (variants of a run, rounds,
earlier runs, a Flower site's retry) with the new release, through the accountant of
:mod:`~fedpatchcore.core.privacy.accounting`; if the most exposed image would pass
``max_epsilon`` the release is refused (:class:`BudgetExceeded`, naming the site and what was
already spent) and nothing is written. A deployed site keeps its own folder; the in-process
lanes of a run share one, so the centralized baseline and every federated variant releasing the
same images compose.

Any mechanism reports into it: a Gaussian release (rows, summary rounds), or a DP-SGD model
whose Opacus accountant history gives ``(noise multiplier, sample rate, steps)`` entries
(:func:`mechanisms_from_opacus`). ``directory=None`` keeps the ledger in memory (tests, audits).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedpatchcore.core.privacy.accounting import PrivacyLedger

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"


@dataclass(frozen=True)
class Mechanism:
    """One (subsampled) Gaussian mechanism run ``steps`` times, its noise per image's sensitivity."""

    name: str
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"{self.name}: a private release needs a positive noise multiplier, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"{self.name}: sample rate must lie in (0, 1], got {self.sample_rate}")
        if int(self.steps) < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {self.steps}")

    def entry(self) -> tuple[str, float, float, int]:
        return (self.name, float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


def mechanisms_from_opacus(name: str, privacy_engine: Any) -> list[Mechanism]:
    """What an Opacus ``PrivacyEngine`` spent (its accountant's history), for :meth:`SiteLedger.charge`."""
    return [Mechanism(name, z, q, int(steps)) for z, q, steps in privacy_engine.accountant.history]


class BudgetExceeded(RuntimeError):
    """A release that would take a site's images past ``privacy.max_epsilon``."""


def image_set_id(keys: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(str(k) for k in keys):
        digest.update(key.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class Spent:
    """The composed budget of a set of images: the most exposed image's ε and its releases."""

    epsilon: float  # 0 when nothing was released
    delta: float
    releases: list[dict[str, Any]]  # the releases composed for the most exposed image
    private: bool  # False when one of them was a reproducible (not private) release

    def describe(self) -> dict[str, Any]:
        return {
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
            "releases": len(self.releases),
            "private": bool(self.private),
            "labels": [r.get("label", "") for r in self.releases],
        }


class SiteLedger:
    """The ledger of one site (``directory=None``: in memory only)."""

    def __init__(
        self,
        directory: str | Path | None,
        site: str,
        accountant: str,
        delta: float,
        max_epsilon: float | None = None,
    ) -> None:
        if max_epsilon is not None and not max_epsilon > 0:
            raise ValueError(f"privacy.max_epsilon must be positive or null, got {max_epsilon}")
        self.directory = None if directory is None else Path(directory)
        self.site = str(site)
        self.accountant = accountant
        self.delta = float(delta)
        self.max_epsilon = max_epsilon
        self._memory: list[dict[str, Any]] = []
        PrivacyLedger(accountant, delta)  # checks the accountant's name

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / f"{self.site}{SUFFIX}"

    # ----------------------------------------------------------------- reading

    def _records(self) -> list[dict[str, Any]]:
        """Every record of every site in the folder (a deployed site's folder holds only its own)."""
        if self.directory is None:
            return list(self._memory)
        records = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"privacy ledger {path}, line {number}: not JSON ({exc})") from exc
        return records

    def _exposure(self, keys: Sequence[str], records: list[dict[str, Any]]) -> dict[tuple[int, ...], list[str]]:
        """Release indices covering each image, grouped: signature -> images with it."""
        sets = {r["id"]: set(r["keys"]) for r in records if r.get("kind") == "images"}
        releases = [r for r in records if r.get("kind") == "release"]
        wanted = set(keys)
        covering: dict[str, list[int]] = {key: [] for key in wanted}
        for index, release in enumerate(releases):
            for key in sets.get(release["images"], set()) & wanted:
                covering[key].append(index)
        groups: dict[tuple[int, ...], list[str]] = {}
        for key, indices in covering.items():
            groups.setdefault(tuple(indices), []).append(key)
        return groups

    def _compose(self, releases: list[dict[str, Any]], extra: Sequence[Mechanism] = ()) -> float:
        entries = [
            (m["name"], float(m["noise_multiplier"]), float(m["sample_rate"]), int(m["steps"]))
            for r in releases
            for m in r["mechanisms"]
        ]
        entries += [m.entry() for m in extra]
        return PrivacyLedger(self.accountant, self.delta).epsilon(entries)

    def spent(self, keys: Iterable[str], extra: Sequence[Mechanism] = ()) -> Spent:
        """Composed ε of ``keys`` (the most exposed one), with ``extra`` mechanisms added to each."""
        keys = sorted(set(map(str, keys)))
        records = self._records()
        releases = [r for r in records if r.get("kind") == "release"]
        worst = Spent(0.0, self.delta, [], True)
        for signature in self._exposure(keys, records):
            chosen = [releases[i] for i in signature]
            if not chosen and not extra:
                continue
            epsilon = self._compose(chosen, extra)
            if epsilon >= worst.epsilon:
                worst = Spent(epsilon, self.delta, chosen, all(r.get("private", True) for r in chosen))
        return worst

    # ----------------------------------------------------------------- writing

    def charge(
        self,
        keys: Iterable[str],
        mechanisms: Sequence[Mechanism],
        *,
        label: str = "",
        private: bool = True,
        release_id: str | None = None,
    ) -> Spent:
        """Record a release of ``keys`` (refused past ``max_epsilon``); returns the composed budget after it.

        ``release_id``: a reproducible release (``privacy.reproducible_not_private``) passes the
        same id each time it recomputes the same output; it is recorded once. Fresh releases
        (noise from OS entropy) get a new id each time and always compose.
        """
        keys = sorted(set(map(str, keys)))
        if not mechanisms:
            raise ValueError("a release records at least one mechanism")
        with self._locked():
            records = self._records()
            if release_id is not None and any(r.get("kind") == "release" and r["id"] == release_id for r in records):
                return self.spent(keys)
            before = self.spent(keys)
            after = self.spent(keys, mechanisms)
            if self.max_epsilon is not None and after.epsilon > self.max_epsilon:
                raise BudgetExceeded(
                    f"site '{self.site}': releasing {len(keys)} images ({label or 'a release'}) would bring the most "
                    f"exposed of them to ε={after.epsilon:.3g} (δ={self.delta:g}), above privacy.max_epsilon="
                    f"{self.max_epsilon:g}; already spent on them: ε={before.epsilon:.3g} over {len(before.releases)} "
                    f"release(s) {[r.get('label', '') for r in before.releases]} "
                    f"(ledger {self.path or 'in memory'})"
                )
            set_id = image_set_id(keys)
            new: list[dict[str, Any]] = []
            if not any(r.get("kind") == "images" and r["id"] == set_id for r in records):
                new.append({"kind": "images", "id": set_id, "keys": keys})
            new.append(
                {
                    "kind": "release",
                    "id": release_id or uuid.uuid4().hex,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "site": self.site,
                    "label": label,
                    "images": set_id,
                    "mechanisms": [asdict(m) for m in mechanisms],
                    "private": bool(private),
                }
            )
            self._append(new)
        logger.info(
            "privacy ledger of site %s: %s on %d images; composed ε=%.3g over %d release(s)",
            self.site,
            label or "release",
            len(keys),
            after.epsilon,
            len(after.releases) + 1,
        )
        return self.spent(keys)

    def _append(self, records: list[dict[str, Any]]) -> None:
        if self.directory is None:
            self._memory.extend(records)
            return
        with self.path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    @contextlib.contextmanager
    def _locked(self):
        """One writer at a time in the folder (parallel lanes of a run, a retried Flower site)."""
        if self.directory is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
