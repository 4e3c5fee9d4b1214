"""Patient-wise splits."""

from __future__ import annotations

import pytest

from cxr.data.splits import SplitConflictError, assign_splits


def ids_and_patients(n_patients: int, per_patient: int = 3) -> tuple[list[str], list[int]]:
    ids = [f"{p:08d}_{k:03d}.png" for p in range(1, n_patients + 1) for k in range(per_patient)]
    return ids, [int(i[:8]) for i in ids]


def test_hash_splits_keep_patients_together_and_follow_the_shares():
    ids, patients = ids_and_patients(3000)
    split = assign_splits(ids, patients, test_share=0.2, val_share=0.1).to_pylist()
    by_patient: dict[int, set[str]] = {}
    for p, s in zip(patients, split, strict=True):
        by_patient.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    shares = {s: sum(1 for v in by_patient.values() if s in v) / 3000 for s in ("train", "val", "test")}
    assert abs(shares["test"] - 0.2) < 0.03 and abs(shares["val"] - 0.1) < 0.03


def test_a_patients_split_does_not_change_when_the_archive_grows():
    ids, patients = ids_and_patients(200)
    before = dict(zip(ids, assign_splits(ids, patients).to_pylist(), strict=True))
    more_ids, more_patients = ids_and_patients(400)
    after = dict(zip(more_ids, assign_splits(more_ids, more_patients).to_pylist(), strict=True))
    assert all(after[i] == s for i, s in before.items())


def test_official_lists_decide_and_unlisted_images_follow_their_patient():
    ids, patients = ids_and_patients(50, per_patient=2)
    test_list = [i for i in ids if int(i[:8]) <= 10 and i.endswith("_000.png")]
    train_val = [i for i in ids if int(i[:8]) > 10]
    split = dict(zip(ids, assign_splits(ids, patients, train_val, test_list).to_pylist(), strict=True))
    assert all(split[i] == "test" for i in ids if int(i[:8]) <= 10)  # _001 follows its patient's _000
    assert all(split[i] in ("train", "val") for i in train_val)


def test_a_patient_in_both_lists_fails_loudly():
    ids, patients = ids_and_patients(5, per_patient=2)
    with pytest.raises(SplitConflictError, match="patient 1 would be in two splits"):
        assign_splits(ids, patients, train_val_list=[ids[0]], test_list=[ids[1]])
    with pytest.raises(SplitConflictError, match="in both"):
        assign_splits(ids, patients, train_val_list=[ids[0]], test_list=[ids[0]])


def test_bad_shares_are_refused():
    with pytest.raises(ValueError, match="share"):
        assign_splits(["a.png"], [1], test_share=0.9, val_share=0.2)
