"""Jobs: the durable record of one accepted push (`model`) and the workers that apply
them (`runner`, imported from there: it needs the storage layer, which needs the model)."""

from pushbase.jobs.model import Job, JobError, JobPhase, JobStats, JobStatus

__all__ = ["Job", "JobError", "JobPhase", "JobStats", "JobStatus"]
