"""Which file holds each label row's image, once every ``.tar.gz`` has been read; what every other file is.

Files and zip members are matched to rows when planning (:mod:`cxr.data.plan`); the members of
``.tar.gz`` archives are known only after their scan (:mod:`cxr.data.tar_scan`), so the rows no file
holds are settled here, with the same rules: the first place an image id is found holds it (files and
zip members first, then archives by name); another member with that id is ``duplicate_image_id``; a
member no row names is ``unlabeled_image``; a row whose image is nowhere is ``missing_image``. A
member that is an input of its own (those, ``unsafe_path`` members and a damaged archive's unread
tail) counts in ``inputs``; a member a row names goes with that row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from cxr.data.archives import LISTING_SCHEMA, member_uri, read_listing
from cxr.data.part_files import UnfinishedPartError
from cxr.data.plan import IngestPlan
from cxr.data.quarantine import QuarantineRecord, Reason
from cxr.data.splits import assign_splits

_OWN_INPUTS = (str(Reason.UNSAFE_PATH), str(Reason.DUPLICATE_IMAGE_ID))  # never matched to a row


@dataclass(frozen=True, slots=True)
class Found:
    """Where a row's image is: its URI, the part holding its pixels, or why it was not decoded."""

    uri: str
    part: str | None
    reason: Reason | None = None
    detail: str | None = None


@dataclass
class Settled:
    found: dict[str, Found]  # image id -> its file, for every label row with one
    quarantine: list[QuarantineRecord] = field(default_factory=list)  # archive members on their own, missing rows
    unnamed: int = 0  # inputs of their own found in archives
    image_files: int = 0  # members of the archives that are files (every one is an input, alone or with its row)
    archive_parts: list[str] = field(default_factory=list)  # parts named by the archives' listings, in order


def settle(plan: IngestPlan) -> Settled:
    """Match the rows no file held to the archives' members; settle every member and every row left."""
    part_of = {image.image_id: spec.key for spec in plan.parts for image in spec.images}
    listed = plan.listed
    settled = Settled(
        {
            i: Found(u, part_of[i])
            for i, u in zip(listed["image_id"].to_pylist(), listed["source_uri"].to_pylist(), strict=True)
        }
    )
    waiting = set(plan.unlisted["image_id"].to_pylist())
    damaged: list[str] = []

    def own(uri: str, image_id: str | None, reason: Reason, detail: str) -> None:
        settled.quarantine.append(QuarantineRecord(uri, image_id, reason, detail))
        settled.unnamed += 1

    for spec in plan.archives:
        listing = read_listing(spec)
        if listing is None:
            raise UnfinishedPartError(f"{spec.url} has not been read to its end by this ingest; rerun the ingest")
        names = LISTING_SCHEMA.names
        for values in zip(*(listing[name].to_pylist() for name in names), strict=True):  # tuples, not dicts
            row = dict(zip(names, values, strict=True))
            if row["member"] is None:  # the unread tail of a damaged archive
                own(spec.url, None, Reason.DAMAGED_ARCHIVE, row["detail"])
                damaged.append(spec.name)
                continue
            settled.image_files += 1
            uri, image_id = member_uri("tar", spec.url, row["member"]), row["image_id"]
            reason = Reason(row["reason"]) if row["reason"] else None
            if row["part"] and row["part"] not in settled.archive_parts:
                settled.archive_parts.append(row["part"])
            if row["reason"] in _OWN_INPUTS:
                own(uri, image_id, Reason(row["reason"]), row["detail"])
            elif image_id in settled.found:
                own(
                    uri,
                    image_id,
                    Reason.DUPLICATE_IMAGE_ID,
                    f"the same image id is also at {settled.found[image_id].uri}",
                )
            elif image_id not in plan.named:  # as for files: unlabeled, unless a link or damaged (never decoded)
                if reason in (Reason.SYMLINK, Reason.DAMAGED_ARCHIVE):
                    own(uri, image_id, reason, row["detail"])
                else:
                    detail = "no row in the label table names this file"
                    own(
                        uri,
                        image_id,
                        Reason.UNLABELED_IMAGE,
                        detail + (f"; {reason}: {row['detail']}" if reason else ""),
                    )
            elif image_id in waiting:
                settled.found[image_id] = Found(uri, row["part"], reason, row["detail"])
            # else: named only by a row quarantined already, which stands for it
    where = "under images/ or images_NNN/images/" + (", nor in the .tar.gz archives" if plan.archives else "")
    if damaged:
        where += f" (damaged, read only in part: {', '.join(damaged)})"
    for image_id, row_uri in zip(
        plan.unlisted["image_id"].to_pylist(), plan.unlisted["row_uri"].to_pylist(), strict=True
    ):
        if image_id not in settled.found:
            settled.quarantine.append(
                QuarantineRecord(row_uri, image_id, Reason.MISSING_IMAGE, f"no file {image_id} {where}")
            )
    return settled


def candidates_with_splits(plan: IngestPlan, settled: Settled) -> pa.Table:
    """Every label row with a file (listed, or found in an archive), by image id, with its split."""
    unlisted_ids = plan.unlisted["image_id"].to_pylist()
    found = [i for i, image_id in enumerate(unlisted_ids) if image_id in settled.found]
    extra = plan.unlisted.take(pa.array(found, pa.int64())).drop_columns(["row_uri"])
    extra = extra.append_column(
        "source_uri", pa.array([settled.found[unlisted_ids[i]].uri for i in found], pa.string())
    )
    candidates = pa.concat_tables([plan.listed, extra.select(plan.listed.schema.names)]).sort_by("image_id")
    split = assign_splits(
        candidates["image_id"].to_pylist(),
        candidates["patient_id"].to_pylist(),
        plan.split_lists[0],
        plan.split_lists[1],
        plan.options.test_share,
        plan.options.val_share,
    )
    return candidates.append_column("split", split)
