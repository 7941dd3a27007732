"""peewee models of the state store. Unbound: ``metasched.store.database.Database`` binds them.

Units: memory in MB, times naive UTC (peewee/SQLite have no zones; the Store API converts).
Bump SCHEMA_VERSION and add a step to ``metasched.store.migrations`` for every change.
"""

from __future__ import annotations

from peewee import (
    SQL,
    AutoField,
    BigIntegerField,
    BlobField,
    BooleanField,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

SCHEMA_VERSION = 8


class BaseModel(Model):
    class Meta:
        legacy_table_names = False


class Setting(BaseModel):
    """Key/value rows: schema_version, runtime policy overrides, ..."""

    key = CharField(primary_key=True)
    value = TextField()


class Destination(BaseModel):
    """One row per destination, with the summary of its last good snapshot (what rank/status read)."""

    id = CharField(primary_key=True)
    scheduler = CharField()
    host = CharField(default="")
    last_attempt = DateTimeField(null=True)
    last_success = DateTimeField(null=True)
    last_error = TextField(null=True)  # error of the last attempt, None when it succeeded
    reachable = BooleanField(default=False)  # last attempt succeeded
    cores_total = IntegerField(default=0)  # of available nodes
    cores_free = IntegerField(default=0)
    mem_total_mb = IntegerField(default=0)
    mem_free_mb = IntegerField(default=0)
    gpus_total = IntegerField(default=0)
    gpus_free = IntegerField(default=0)
    nodes_total = IntegerField(default=0)
    nodes_unavailable = IntegerField(default=0)
    jobs_running = IntegerField(default=0)
    jobs_queued = IntegerField(default=0)  # pending, not held
    jobs_held = IntegerField(default=0)
    queued_cores = IntegerField(default=0)  # cores requested by pending jobs: work ahead of a new job
    running_cores = IntegerField(default=0)
    # Largest available node (schema v3): a job runs on one node, so the totals above cannot say
    # whether it fits. None when no node is available (or not collected since the migration).
    max_node_cores = IntegerField(null=True)
    max_node_mem_mb = IntegerField(null=True)
    max_node_gpus = IntegerField(null=True)
    disabled_reason = TextField(null=True)  # operator disable (serve/status issue)
    disabled_until = DateTimeField(null=True)
    # The scheduler's expected starts of the pending jobs (schema v6), reduced to what rank needs:
    # JSON [[cores, mem_mb, gpus, start, estimated_at], ...] (epoch seconds, UTC), see
    # ``metasched.store.start_estimates``. None when the scheduler gave none.
    start_estimates = TextField(null=True)


class Node(BaseModel):
    id = AutoField()
    # Not indexed alone: the unique index below starts with destination.
    destination = ForeignKeyField(Destination, backref="nodes", on_delete="CASCADE", index=False)
    name = CharField()
    state = CharField()
    available = BooleanField()
    cores_total = IntegerField()
    cores_alloc = IntegerField(default=0)
    mem_total_mb = IntegerField(default=0)
    mem_alloc_mb = IntegerField(default=0)
    mem_free_mb = IntegerField(null=True)
    gpus_total = IntegerField(default=0)
    gpus_alloc = IntegerField(default=0)
    load_1 = FloatField(null=True)
    load_5 = FloatField(null=True)
    load_15 = FloatField(null=True)
    partitions = TextField(default="")  # comma-separated
    reason = TextField(default="")

    class Meta:
        indexes = ((("destination", "name"), True),)


class Partition(BaseModel):
    id = AutoField()
    # Not indexed alone: the unique index below starts with destination.
    destination = ForeignKeyField(Destination, backref="partitions", on_delete="CASCADE", index=False)
    name = CharField()
    is_default = BooleanField(default=False)
    state = CharField(default="up")
    available = BooleanField(default=True)
    nodes_total = IntegerField(default=0)
    cores_total = IntegerField(default=0)
    limits = TextField(default="{}")  # JSON object

    class Meta:
        indexes = ((("destination", "name"), True),)


class Job(BaseModel):
    """Jobs pending/running/held at the destination as of its last good snapshot."""

    id = AutoField()
    # Not indexed alone: the unique index below starts with destination.
    destination = ForeignKeyField(Destination, backref="jobs", on_delete="CASCADE", index=False)
    job_id = CharField()
    state = CharField()  # pending | running | held | other
    raw_state = CharField(default="")
    partition = CharField(default="")
    name = TextField(default="")
    user = CharField(default="")
    reason = TextField(default="")
    cores = IntegerField(default=1)
    mem_mb = IntegerField(default=0)
    gpus = IntegerField(default=0)
    submit_time = DateTimeField(null=True)
    start_time = DateTimeField(null=True)
    nodes = TextField(default="")
    galaxy_job_id = IntegerField(null=True)
    tool_key = CharField(null=True)  # see metasched.store.galaxy
    start_estimate = DateTimeField(null=True)  # pending: the scheduler's expected start (schema v6)
    estimated_at = DateTimeField(null=True)  # when it computed that (collect time when unknown)

    class Meta:
        indexes = ((("destination", "job_id"), True),)


class CollectRun(BaseModel):
    """One row per destination per collect run: the audit trail operators read."""

    id = AutoField()
    run_id = CharField(index=True)  # shared by all destinations of one run
    destination_id = CharField()  # not a FK: failures of unknown/removed destinations are kept
    started = DateTimeField()
    finished = DateTimeField()
    ok = BooleanField()
    error = TextField(null=True)
    duration_s = FloatField()

    class Meta:
        indexes = ((("destination_id", "started"), False),)  # pruning and per-destination history


class FinishedJob(BaseModel):
    """A job seen pending/running earlier and gone now: what metasched learns queue/run times from."""

    id = AutoField()
    destination_id = CharField()
    job_id = CharField()
    partition = CharField(default="", constraints=[SQL("DEFAULT ''")])  # schema v2
    name = TextField(default="")
    user = CharField(default="")
    galaxy_job_id = IntegerField(null=True)
    tool_key = CharField(null=True)  # indexed with destination_id, end_time below
    cores = IntegerField(default=1)
    mem_mb = IntegerField(default=0)
    submit_time = DateTimeField(null=True)
    start_time = DateTimeField(null=True)
    end_time = DateTimeField()  # the collect that first missed it (upper bound, within one interval)
    queue_s = FloatField(null=True)  # start - submit; None when never seen running
    run_s = FloatField(null=True)  # end - start

    class Meta:
        indexes = (
            (("destination_id", "job_id", "submit_time"), True),
            # queue_s, run_s (schema v3): rank's per-tool read is answered from the index alone.
            (("tool_key", "destination_id", "end_time", "queue_s", "run_s"), False),
            (("destination_id", "end_time"), False),  # schema v2: pruning without a scan
        )


class ToolHistory(BaseModel):
    """Newest finished-job samples per (destination, tool_key), kept by write_snapshot (schema v4).

    Derived from FinishedJob (see ``metasched.store.samples``) so rank reads one row per destination
    and tool instead of every history row; FinishedJob stays the record.
    """

    id = AutoField()
    destination_id = CharField()
    tool_key = CharField()
    oldest_end = DateTimeField()  # end time of the oldest sample: pruning below it refreshes the row
    samples = BlobField()

    class Meta:
        indexes = ((("tool_key", "destination_id"), True),)


class Metric(BaseModel):
    """Values pulled from external metric sources (InfluxDB), cached so rank never waits on the network."""

    id = AutoField()
    source = CharField()  # measurement name
    destination_id = CharField(index=True)  # TPV destination id (mapped from runner/vhost names)
    tool_id = CharField(default="")  # "" when not per tool
    name = CharField()  # e.g. queued, running, free_cores, free_mem_mb, median_queue_s, status
    value = FloatField(null=True)
    text = TextField(null=True)
    observed_at = DateTimeField(null=True)  # time of the point in the source
    fetched_at = DateTimeField()

    class Meta:
        indexes = ((("source", "destination_id", "tool_id", "name"), True),)


class Placement(BaseModel):
    """Where rank sent a Galaxy job and what it predicted (schema v5): the placement ledger.

    Rank counts in-flight entries as demand the collected state cannot contain yet (bursts ranked
    against one snapshot); collect resolves them when the job shows up and keeps the outcome, so
    predictions can be checked against what happened. See ``metasched.store.placements``.
    """

    job_id = CharField(primary_key=True)  # Galaxy job id as text (request job.job_id)
    destination = CharField()  # first feasible destination of the answer; not a FK (may be request-only)
    tool_id = CharField()
    cores = FloatField()
    mem_mb = FloatField()
    gpus = FloatField()
    placed_at = DateTimeField()
    pred_staging_s = FloatField()
    pred_queue_s = FloatField()
    pred_run_s = FloatField()
    # inflight | resolved | expired
    state = CharField(default="inflight", constraints=[SQL("DEFAULT 'inflight'")])
    resolved_at = DateTimeField(null=True)  # set by collect's reconciliation
    actual_destination = CharField(null=True)  # where the job really went (TPV may fall through)
    actual_queue_s = FloatField(null=True)
    actual_run_s = FloatField(null=True)
    finished_at = DateTimeField(null=True)
    # Moved by triggers on every write (schema v8): what changed since a read (metasched.store.inflight).
    seq = BigIntegerField(default=0, constraints=[SQL("DEFAULT 0")])

    class Meta:
        indexes = (
            (("state", "placed_at"), False),  # rank's one in-flight query; expiry
            (("actual_destination", "finished_at"), False),  # calibration per destination
        )


class StateGeneration(BaseModel):
    """One row; ``n`` grows with every change to what ranking reads (schema v7: triggers, see
    ``metasched.store.generation``), so a reader's cache knows when it is stale."""

    id = IntegerField(primary_key=True)
    n = IntegerField(default=0)


MODELS: list[type[BaseModel]] = [
    Setting,
    Destination,
    Node,
    Partition,
    Job,
    CollectRun,
    FinishedJob,
    ToolHistory,
    Metric,
    Placement,
    StateGeneration,
]
