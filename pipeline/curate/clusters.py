"""Identities across the dataset, and duplicate clips: the curation driver's dataset-level step.

Runs after every video is analysed (a worker sees one video; copies and people span videos), on the
accepted clips that have an identity embedding, in a canonical order ((video_id, start_frame)), so the
result does not depend on which worker finished first. A registry, `curate/identities/<model>.json`,
remembers every decision, so a re-run gives the same answers and a new batch of videos never renumbers
or re-judges the clips before it:

1. Duplicates. A new clip duplicates an earlier one (a registered clip, else one earlier in this batch)
   when both show the same person (identity distance below the encoder's rule) and at least `min_shared`
   of the shorter clip's hashed frames (every `identity.every` frames: a 64-bit dHash of the face crop and
   one of the whole frame) have a frame in the other within `max_hamming` bits of the 128: the same
   footage under another URL, re-encoded or rescaled, or two overlapping cuts of it. It is rejected as `duplicate`, `duplicate_of` naming the
   clip it copies; a copy of a copy names the first.
2. Identities. The new originals are clustered by average linkage at the same-person distance; a cluster
   whose mean is within that distance of a registered identity's centroid joins it, else it founds a new
   identity named after its first clip (`i` + 12 hex of that clip id). Duplicates take their original's.

Opt-out marks removed clips here (`forget`); an identity left without clips is deleted with its centroid.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.curate.identity import IdentityConfig, distance, encoder_rule, hamming
from pipeline.paths import DataRoot, safe_name

REGISTRY_VERSION = 1


@dataclass
class ManifestConfig:
    """The `manifest` stage (dags/curate.yaml): dataset-level, so changing it re-analyses no video."""
    # bits (of 128: face crop + whole frame) a copy's frame may differ by. Test corpus: re-encoded, rescaled,
    # 25-fps and trimmed copies share >= 67% of frames at <= 12 bits; other footage of the same photo 0%
    # at 12 but up to 60% at 16
    duplicate_max_hamming: int = 12
    duplicate_min_shared: float = 0.5   # share of the shorter clip's hashed frames found in the other


# ---------------------------------------------------------------- the registry

REGISTRY_DIR = "curate/identities"


def registry_key(model: str) -> str:
    return f"{REGISTRY_DIR}/{safe_name(model)}.json"


def _registries(root: DataRoot) -> list[str]:
    """Keys of every identity registry under the data root (one per identity model)."""
    return [f"{REGISTRY_DIR}/{n}" for n in root.ls(REGISTRY_DIR, "*.json")]


def load_registry(root: DataRoot, model: str) -> dict:
    k = registry_key(model)
    if root.exists(k):
        reg = json.loads(root.read_text(k))
        if reg.get("version") == REGISTRY_VERSION:
            return reg
    return {"version": REGISTRY_VERSION, "model": model, "batches": 0, "identities": {}, "clips": {}}


def save_registry(root: DataRoot, reg: dict) -> None:
    root.write_text(registry_key(reg["model"]), json.dumps(reg, sort_keys=True) + "\n")


def forget(root: DataRoot, clip_ids: set[str]) -> int:
    """Opt-out: mark removed clips in every registry; an identity left with no live clip is deleted with its
    centroid. The entries keep only ids and duplicate links (no biometric data), so verify can follow
    copies of removed clips."""
    n = 0
    for k in _registries(root):
        reg = json.loads(root.read_text(k))
        gone = [c for c, v in reg.get("clips", {}).items() if c in clip_ids and not v.get("removed")]
        if not gone:
            continue
        for c in gone:
            reg["clips"][c]["removed"] = True
        live = Counter(v["identity_id"] for v in reg["clips"].values()
                       if v["duplicate_of"] is None and not v.get("removed"))
        reg["identities"] = {i: v for i, v in reg["identities"].items() if live.get(i)}
        for i, v in reg["identities"].items():
            v["clips"] = live[i]
        root.write_text(k, json.dumps(reg, sort_keys=True) + "\n")
        n += len(gone)
    return n


def duplicate_links(root: DataRoot) -> dict[str, str]:
    """{clip_id: clip it duplicates} from every registry (opt-out and verify follow copies through it)."""
    out: dict[str, str] = {}
    for k in _registries(root):
        out.update({c: v["duplicate_of"] for c, v in json.loads(root.read_text(k)).get("clips", {}).items()
                    if v.get("duplicate_of")})
    return out


def copies_of(clip_ids: set[str], links: dict[str, str]) -> set[str]:
    """Every clip linked to one of `clip_ids` through duplicate links, in either direction (them excluded)."""
    adj: dict[str, set[str]] = {}
    for a, b in links.items():
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    seen, todo = set(clip_ids), list(clip_ids)
    while todo:
        for n in adj.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen - set(clip_ids)


# ---------------------------------------------------------------- the step

def may_copy(c1: dict, c2: dict) -> bool:
    """Two clips of one video are copies only where their frame spans overlap: consecutive clips of one
    static talking-head shot hash alike (same person, same background) but are different footage
    (seen on a real 20 s interview, whose second and third clips were taken for copies of the first)."""
    if c1["video_id"] != c2["video_id"]:
        return True
    return int(c1["start_frame"]) < int(c2["end_frame"]) and int(c2["start_frame"]) < int(c1["end_frame"])


def shared_frames(c1: dict, c2: dict, max_hamming: int) -> float:
    """Share of the shorter clip's hashed frames that have a frame in the other within max_hamming bits
    (face-crop and whole-frame hashes together: 128 bits)."""
    n1, n2 = len(c1.get("face_hashes") or []), len(c2.get("face_hashes") or [])
    if not n1 or not n2:
        return 0.0
    a, b = (c1, c2) if n1 <= n2 else (c2, c1)
    d = sum(hamming(np.asarray(a[k], np.int64)[:, None], np.asarray(b[k], np.int64)[None, :])   # (len a, len b)
            for k in ("face_hashes", "frame_hashes"))
    return float((d.min(1) <= max_hamming).mean())


def _cluster(embs: np.ndarray, metric: str, threshold: float) -> list[int]:
    """Average-linkage clusters (labels 0.. in order of first appearance) cut at `threshold`."""
    if len(embs) == 1:
        return [0]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    z = linkage(pdist(embs.astype(np.float64), metric="euclidean" if metric == "euclidean" else "cosine"),
                method="average")
    raw = fcluster(z, t=threshold, criterion="distance")
    first: dict[int, int] = {}
    return [first.setdefault(int(r), len(first)) for r in raw]


def assign(root: DataRoot, states: list[dict], cfg: ManifestConfig, identity_cfg: IdentityConfig,
           log=lambda m: None) -> dict:
    """Set identity_id / duplicate_of on the accepted clips of `states` (in place; duplicates become
    rejected, with a rejection row); update the registries. Returns statistics for stats.json."""
    rows = [r for st in states for r in st.get("clips", []) if r.get("status") == "accepted" and r.get("identity")]
    rows.sort(key=lambda r: (r["video_id"], r["start_frame"], r["clip_id"]))
    stats = {"clips_with_identity": len(rows), "new_duplicates": 0, "new_identities": 0, "models": {}}
    for model in sorted({r["identity_model"] for r in rows}):
        mine = [r for r in rows if r["identity_model"] == model]
        metric, same = encoder_rule(model, identity_cfg)
        reg = load_registry(root, model)
        new = [r for r in mine if r["clip_id"] not in reg["clips"]]
        if new:
            stats["new_duplicates"] += _find_duplicates(reg, mine, new, metric, same, cfg)
            stats["new_identities"] += _new_identities(reg, new, metric, same)
            reg["batches"] += 1
            save_registry(root, reg)
        for r in mine:
            e = reg["clips"][r["clip_id"]]
            r.update(identity_id=e["identity_id"], duplicate_of=e["duplicate_of"])
        stats["models"][model] = {"identities": len(reg["identities"]), "same_person": same, "metric": metric}
    for st in states:    # rejected duplicates: a rejection row each, and the video's counts
        for r in st.get("clips", []):
            if r.get("duplicate_of") and r["status"] == "accepted":
                r.update(status="rejected", reason="duplicate")
                if r.get("clip_path"):     # media.keep: a copy keeps no crop file of its own
                    root.rm(r["clip_path"])
                    r["clip_path"] = ""
                st.setdefault("rejections", []).append(
                    {k: r[k] for k in ("video_id", "url", "start_frame", "end_frame", "start_s", "end_s")}
                    | {"stage": "identity", "reason": "duplicate"})
        acc = [r for r in st.get("clips", []) if r["status"] == "accepted"]
        if st.get("video", {}).get("status") == "ok" and st.get("clips"):
            st["video"].update(accepted=len(acc), accepted_s=sum(r["duration_s"] for r in acc))
            if not acc:
                st["video"].update(status="no_clips", message="no accepted clip; every one duplicates an earlier clip")
    per = Counter(r["identity_id"] for r in rows if r.get("status") == "accepted")
    stats.update(identities=len(per), clips_per_identity=sorted(per.values(), reverse=True),
                 duplicates=sum(bool(r.get("duplicate_of")) for r in rows))
    log(f"curate: identities: {len(per)} people in {sum(per.values())} accepted clips "
        f"({stats['new_identities']} new), {stats['duplicates']} duplicate clips rejected")
    return stats


def _find_duplicates(reg: dict, mine: list[dict], new: list[dict], metric: str, same: float,
                     cfg: ManifestConfig) -> int:
    """Judge the new clips against the registered originals present, then against earlier new ones."""
    known = reg["clips"]
    old = sorted((r for r in mine if r["clip_id"] in known and known[r["clip_id"]]["duplicate_of"] is None
                  and not known[r["clip_id"]].get("removed")),
                 key=lambda r: (known[r["clip_id"]]["batch"], r["video_id"], r["start_frame"]))
    originals, n = list(old), 0
    for r in new:
        dup = None
        if originals:
            d = distance(np.asarray([o["identity"] for o in originals]), np.asarray(r["identity"]), metric)
            for k in np.nonzero(d < same)[0]:      # the same person first (cheap), then the footage
                if not may_copy(r, originals[k]):
                    continue
                if shared_frames(r, originals[k], cfg.duplicate_max_hamming) >= cfg.duplicate_min_shared:
                    dup = originals[k]
                    break
        reg["clips"][r["clip_id"]] = {"identity_id": None, "duplicate_of": dup["clip_id"] if dup else None,
                                      "batch": reg["batches"]}
        if dup is None:
            originals.append(r)
        else:
            n += 1
    return n


def _new_identities(reg: dict, new: list[dict], metric: str, same: float) -> int:
    """Cluster the new originals, attach clusters to registered identities or found new ones."""
    orig = [r for r in new if reg["clips"][r["clip_id"]]["duplicate_of"] is None]
    founded = 0
    if orig:
        embs = np.asarray([r["identity"] for r in orig], np.float64)
        labels = _cluster(embs, metric, same)
        for lab in range(max(labels) + 1):
            members = [r for r, la in zip(orig, labels) if la == lab]
            m = embs[[i for i, la in enumerate(labels) if la == lab]]
            mean = m.mean(0)
            ids = sorted(reg["identities"])
            ident = None
            if ids:
                d = distance(np.asarray([reg["identities"][i]["centroid"] for i in ids]), mean, metric)
                if d.min() < same:
                    ident = ids[int(d.argmin())]
            if ident is None:
                ident = "i" + members[0]["clip_id"][:12]
                reg["identities"][ident] = {"centroid": mean.tolist(), "clips": 0}
                founded += 1
            else:   # running mean over the identity's clips
                rec = reg["identities"][ident]
                c = (np.asarray(rec["centroid"]) * rec["clips"] + m.sum(0)) / (rec["clips"] + len(m))
                rec["centroid"] = c.tolist()
            reg["identities"][ident]["clips"] += len(members)
            for r in members:
                reg["clips"][r["clip_id"]]["identity_id"] = ident
    for r in new:        # duplicates: their original's identity (registered, or just assigned above)
        entry = reg["clips"][r["clip_id"]]
        if entry["duplicate_of"] is not None:
            entry["identity_id"] = reg["clips"][entry["duplicate_of"]]["identity_id"]
    return founded
