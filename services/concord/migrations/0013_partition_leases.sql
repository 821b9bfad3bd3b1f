-- Fencing (issue 15, item 3): a worker that is assigned a partition claims it by raising its
-- epoch; a write of a stage's state checks, in its own transaction, that the epochs of the
-- partitions it writes for are still the ones its worker claimed. An old owner that has not
-- yet heard of a rebalance can then no longer write over its successor's state.
CREATE TABLE partition_leases (
    stage           text    NOT NULL,
    kafka_partition integer NOT NULL,
    epoch           bigint  NOT NULL,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, kafka_partition)
);
