"""Train/val/test splits of a record list: seeded shuffle (tunelab) or file order (the book).

`shuffled` (default): a seeded shuffle, then train/val/test by fractions, so a file sorted by
topic or length still gives representative splits. `file`: no shuffle, and the slices in the
book's order (ch07 and the DPO notebook): train = the first int(n x train) records, test = the
next int(n x test), val = the rest, at the end of the file.
"""

from __future__ import annotations

from tunelab.data.records import split_records

SPLIT_ORDERS = ("shuffled", "file")


def check_split_order(order: str) -> None:
    if order not in SPLIT_ORDERS:
        raise ValueError(f"data.split_order: expected 'shuffled' or 'file', got {order!r}")


def split_by_order(
    records: list, fractions: tuple[float, float, float], seed: int, order: str = "shuffled"
) -> tuple[list, list, list]:
    """(train, val, test) lists."""
    check_split_order(order)
    if order == "shuffled":
        return split_records(records, fractions, seed)
    # The fractions are checked by split_records; its shuffled output is not used.
    split_records([], fractions, seed)
    n = len(records)
    n_train, n_test = int(n * fractions[0]), int(n * fractions[2])
    train = records[:n_train]
    test = records[n_train : n_train + n_test]
    val = records[n_train + n_test :]
    return train, val, test
