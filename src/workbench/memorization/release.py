"""What the release gate checks before and after the search: a synthetic store, and no image that
is a held-out patient's image (used by :func:`workbench.runs.release.release_gate`).

Before anything is searched or written, the gate checks that what it is asked to release is a
synthetic store (:func:`check_synthetic_store`): ``store.json`` says ``kind: synthetic``, no row
names a patient (``subject``) or a source file, and it is not the reference store itself.  A
store of patient images given by mistake as ``--synthetic`` is refused, and nothing is written.
As a last line of defence, an image that is the same as a held-out image (pixel r of at least
:data:`IDENTICAL_R`) is removed too: no model that never saw that patient makes it.
"""
from __future__ import annotations

from pathlib import Path

from ..data.store import SliceStore
from ..errors import WorkbenchError

#: pixel r at which a synthetic image is taken to be the same image as a held-out one
IDENTICAL_R = 0.999


def check_synthetic_store(synthetic: SliceStore, reference: SliceStore | None = None) -> list[dict]:
    """Refuse anything but a store of synthetic images; return the checks made, for the report.

    A store is synthetic when its ``store.json`` says ``kind: synthetic`` (``workbench sample``
    writes that) and none of its rows names a subject or a source file (rows of patient images
    always do).  It must not be the reference store either.
    """
    where = f"{synthetic.path}"
    hint = ("the release gate writes only images a model made (`workbench sample` writes such a store); "
            "check the --synthetic argument")
    if synthetic.kind != "synthetic":
        raise WorkbenchError(f"{where}: store.json says kind {synthetic.kind!r}, not 'synthetic': these are images of "
                             f"patients, not synthetic images; nothing was released ({hint})")
    m = synthetic.manifest
    named = {col: int(m[col].notna().sum()) for col in ("subject", "source")}
    if any(named.values()):
        example = m.loc[m["subject"].notna() | m["source"].notna(), ["subject", "source"]].iloc[0]
        raise WorkbenchError(f"{where}: {named['subject']} of {len(m)} rows name a subject and {named['source']} a source "
                             f"file (e.g. {example['subject']}, {example['source']}): rows of patient images, not "
                             f"synthetic ones; nothing was released ({hint})")
    same = reference is not None and (
        Path(synthetic.path).resolve() == Path(reference.path).resolve()
        or (synthetic.meta.get("id") is not None and synthetic.meta.get("id") == reference.meta.get("id")))
    if same:
        raise WorkbenchError(f"{where}: is the reference store {reference.path} itself; nothing was released ({hint})")
    models = int(m["model"].notna().sum())
    return [
        {"check": "store kind", "passed": True, "detail": f"store.json of {where} says kind 'synthetic'"},
        {"check": "no patient identifiers", "passed": True,
         "detail": f"none of its {len(m)} rows names a subject or a source file"},
        {"check": "not the reference store", "passed": True,
         "detail": "another folder and store id than the reference store" if reference is not None else "no reference"},
        {"check": "model recorded", "passed": models == len(m),
         "detail": f"{models} of {len(m)} rows name the model that made them ({synthetic.meta.get('model')!r} in store.json)"},
    ]
