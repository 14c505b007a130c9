//! The operator's view of the jobs stream: every job stored and not yet
//! settled (waiting to be delivered, waiting out a retry pause, or running),
//! read and removed by stream sequence.
//!
//! The stream has work-queue retention, so a message is there exactly until
//! an executor acks or terminates it: what this lists is what is still to
//! be done. Reads go to the stream leader (`STREAM.MSG.GET`), one request a
//! job, so a page is bounded by its caller.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use chrono::{DateTime, Utc};
use picloud_core::Job;

use crate::{Bus, BusError};

/// A job still in the stream.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    /// Its stream sequence: the id the admin API names it by.
    pub seq: u64,
    pub script: String,
    /// When it was stored.
    pub queued_at: DateTime<Utc>,
    /// The job, or why it could not be read (a job no release can decode
    /// can only be discarded).
    pub job: Result<Job, String>,
}

impl Bus {
    /// Up to `limit` jobs with a sequence above `after`, oldest first, of
    /// one script or of all.
    pub async fn queued_jobs(
        &self,
        script: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedJob>, BusError> {
        let stream = self.jobs_stream().await?;
        let subject = match script {
            Some(s) => self.names.job_subject(s),
            None => self.names.jobs_wildcard(),
        };
        let mut jobs = Vec::new();
        let mut next = after.saturating_add(1);
        while jobs.len() < limit {
            let found = stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            match found {
                Ok(m) => {
                    next = m.sequence.saturating_add(1);
                    if let Some(job) = self.queued(m) {
                        jobs.push(job);
                    }
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(BusError::js("jobs stream read")(e.into())),
            }
        }
        Ok(jobs)
    }

    /// The job stored at `seq`, if it is still there.
    pub async fn queued_job(&self, seq: u64) -> Result<Option<QueuedJob>, BusError> {
        let stream = self.jobs_stream().await?;
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(self.queued(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BusError::js("jobs stream read")(e.into())),
        }
    }

    /// Removes the job at `seq` from the stream: no executor will be given
    /// it again (one running it now finishes; its settle is then a no-op).
    /// `false` when it was gone already.
    pub async fn remove_queued_job(&self, seq: u64) -> Result<bool, BusError> {
        if self.queued_job(seq).await?.is_none() {
            return Ok(false);
        }
        let stream = self.jobs_stream().await?;
        match stream.delete_message(seq).await {
            Ok(done) => Ok(done),
            // Settled between the read and the delete.
            Err(_) if self.queued_job(seq).await?.is_none() => Ok(false),
            Err(e) => Err(BusError::js("jobs stream delete")(e.into())),
        }
    }

    async fn jobs_stream(&self) -> Result<Stream<()>, BusError> {
        self.js
            .get_stream_no_info(self.names.jobs_stream())
            .await
            .map_err(|e| BusError::js("jobs stream")(e.into()))
    }

    /// `None` for a message that is not on a job subject.
    fn queued(&self, m: StreamMessage) -> Option<QueuedJob> {
        let script = self.names.script_of_job_subject(&m.subject)?.to_owned();
        let queued_at = DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
            .unwrap_or_default();
        let job = crate::wire::read::<Job>(&m.subject, Some(&m.headers), &m.payload)
            .map_err(|e| e.to_string());
        Some(QueuedJob {
            seq: m.sequence,
            script,
            queued_at,
            job,
        })
    }
}
