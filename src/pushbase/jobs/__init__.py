"""Jobs: the durable record of one accepted push and the runner that applies them."""

from pushbase.jobs.model import Job, JobError, JobPhase, JobStats, JobStatus
from pushbase.jobs.runner import JobRunner

__all__ = ["Job", "JobError", "JobPhase", "JobRunner", "JobStats", "JobStatus"]
