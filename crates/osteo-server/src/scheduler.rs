//! Batching: one worker thread per (model, backend) owns the loaded backend and drains a bounded
//! queue. With `max_delay` zero (the default) batching is continuous: the moment the backend is
//! free the worker takes whatever is queued, up to `max_batch`, so a lone request runs at once
//! and requests that arrive while the backend is busy form the next batch. A positive
//! `max_delay` lets a batch's first request wait that long for partners (Triton's dynamic
//! batching window). A full queue answers RESOURCE_EXHAUSTED; requests whose caller went away
//! (cancelled, deadline passed) are skipped, never computed.
//!
//! The worker supervises its backend: a panic inside a backend call fails only that batch
//! (INTERNAL) and the worker goes on; a batch the device has no memory for is retried in halves;
//! after [`MAX_CONSECUTIVE_FAILURES`] failed batches in a row (panics or device errors) the
//! worker reports itself down, drops the backend and reloads it, answering UNAVAILABLE and
//! retrying the load with back-off until it succeeds. [`Worker::is_up`] and the shared
//! [`Notify`] let the server mirror this in grpc.health.v1.

use crate::error::ServerError;
use crate::registry::Loader;
use crate::stats::ModelStats;
use osteo_core::{
    ArchSpec, Backend, BackendError, BackendInfo, Batch, Device, Explanation, ModelArtifacts,
    Sample,
};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// Failed batches in a row (panics, device errors) after which a worker reloads its backend.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;

/// Batching limits of one worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// Largest batch.
    pub max_batch: usize,
    /// Longest wait of a batch's first request for more requests.
    pub max_delay: Duration,
    /// Requests waiting before RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Run at the lowest CPU priority on one thread (shadow work): the worker's thread, the
    /// threads its backend starts and its one-thread compute pool take only CPU time nothing
    /// else wants.
    pub background: bool,
}

impl From<&crate::config::SchedulerSettings> for BatchConfig {
    fn from(s: &crate::config::SchedulerSettings) -> Self {
        Self {
            max_batch: s.max_batch,
            max_delay: Duration::from_millis(s.max_delay_ms),
            queue_capacity: s.queue_capacity,
            background: false,
        }
    }
}

/// Lowers the calling thread's CPU priority to the least (nice 19; on Linux the nice value is
/// per thread and threads started from it inherit it). Failure only costs priority: logged.
fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::warn!(error = %e, "could not lower a background worker's CPU priority");
    }
}

/// When a sample was queued, and the span of the call that queued it (the worker thread runs
/// the backend inside it, so a call's trace continues across the queue).
struct Queued {
    at: Instant,
    span: tracing::Span,
}

impl Queued {
    /// Queued now, by the current span's call.
    fn now() -> Self {
        Self {
            at: Instant::now(),
            span: tracing::Span::current(),
        }
    }
}

enum Job {
    Predict {
        input: Sample,
        enqueued: Queued,
        reply: oneshot::Sender<Result<Vec<f32>, BackendError>>,
    },
    Explain {
        input: Sample,
        enqueued: Queued,
        reply: oneshot::Sender<Result<Explanation, BackendError>>,
    },
}

/// A backend on its own thread, fed through a bounded queue.
pub struct Worker {
    tx: SyncSender<Job>,
    info: BackendInfo,
    model: String,
    capacity: usize,
    up: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the thread, loads the model with `loader` on it and waits until it is ready.
    /// Blocking: call it from a blocking context.
    /// `changed` is notified whenever the worker goes down or comes back up; `stats` counts
    /// its queue waits and executions.
    pub fn spawn(
        artifacts: &ModelArtifacts,
        device: Device,
        loader: Loader,
        config: BatchConfig,
        changed: Arc<Notify>,
        stats: Arc<ModelStats>,
    ) -> Result<Self, ServerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(config.queue_capacity);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let artifacts_owned = artifacts.clone();
        let arch = artifacts.manifest.arch.clone();
        let model = artifacts.manifest.name.clone();
        let thread_name = format!("worker-{model}");
        let up = Arc::new(AtomicBool::new(true));
        let up_worker = up.clone();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let background = config.background;
                if background {
                    lower_priority();
                }
                let work = move || match guarded(|| loader(&artifacts_owned, device)) {
                    Ok(backend) => {
                        let info = backend.info();
                        let _ = ready_tx.send(Ok(info.clone()));
                        let labels = [
                            ("model", artifacts_owned.manifest.name.clone()),
                            ("backend", info.name.clone()),
                        ];
                        let mut supervisor = Supervisor {
                            backend: Some(backend),
                            loader,
                            artifacts: artifacts_owned,
                            device,
                            info,
                            failures: 0,
                            up: up_worker,
                            changed,
                            labels,
                            stats,
                        };
                        supervisor.run(rx, &arch, config);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                };
                // A background backend computes on one thread of its own, not on the shared
                // pool the served backends use.
                let pool = background
                    .then(|| {
                        rayon::ThreadPoolBuilder::new()
                            .num_threads(1)
                            .thread_name(|_| "shadow-compute".into())
                            .start_handler(|_| lower_priority())
                            .build()
                            .ok()
                    })
                    .flatten();
                match pool {
                    Some(pool) => pool.install(work),
                    None => work(),
                }
            })
            .map_err(|e| ServerError::Internal(format!("cannot start a worker thread: {e}")))?;
        let info = ready_rx
            .recv()
            .map_err(|_| {
                ServerError::Internal(format!("the worker of {model} died while loading"))
            })?
            .map_err(|e| ServerError::Config(format!("model {model}: {e}")))?;
        Ok(Self {
            tx,
            info,
            model,
            capacity: config.queue_capacity,
            up,
        })
    }

    /// Whether the backend is loaded and answering (false while it is being reloaded after
    /// repeated failures, or after it stopped).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Backend name, device and library version.
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn submit(&self, job: Job) -> Result<(), ServerError> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ServerError::ResourceExhausted(format!(
                "the queue of model {} on backend {} is full ({} requests waiting); retry with \
                 backoff",
                self.model, self.info.name, self.capacity
            )),
            TrySendError::Disconnected(_) => ServerError::Unavailable(format!(
                "backend {} of model {} has stopped",
                self.info.name, self.model
            )),
        })
    }

    /// Queues a job built around its reply channel; returns where its answer will arrive.
    fn queue<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, BackendError>>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, BackendError>>, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.submit(job(reply))?;
        Ok(rx)
    }

    /// Waits for a queued job's answer; logits that are not all finite are refused (finite
    /// inputs far outside the training range can overflow the network, and such an answer must
    /// never be graded).
    async fn answer<T: Logits>(
        &self,
        rx: oneshot::Receiver<Result<T, BackendError>>,
    ) -> Result<T, ServerError> {
        let answer = rx
            .await
            .map_err(|_| self.stopped())?
            .map_err(ServerError::from)?;
        if osteo_core::backend::first_non_finite(answer.logits()).is_some() {
            return Err(ServerError::InvalidArgument(
                "the model's output for this input is not a finite number: the input values are \
                 far outside the range the model was trained on; check their units and scaling"
                    .into(),
            ));
        }
        Ok(answer)
    }

    /// Queues a job built around its reply channel and waits for the answer.
    async fn call<T: Logits>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, BackendError>>) -> Job,
    ) -> Result<T, ServerError> {
        let rx = self.queue(job)?;
        self.answer(rx).await
    }

    /// Queues one sample and waits for its logits (class order).
    pub async fn predict(&self, input: Sample) -> Result<Vec<f32>, ServerError> {
        self.call(|reply| Job::Predict {
            input,
            enqueued: Queued::now(),
            reply,
        })
        .await
    }

    /// Queues every sample before waiting for any, so they can share batches (with each other
    /// and with other requests); answers their logits in order. A full queue refuses the rest
    /// with RESOURCE_EXHAUSTED; the samples already queued are skipped once nobody waits.
    pub async fn predict_many(&self, inputs: Vec<Sample>) -> Result<Vec<Vec<f32>>, ServerError> {
        let mut answers = Vec::with_capacity(inputs.len());
        for input in inputs {
            answers.push(self.queue(|reply| Job::Predict {
                input,
                enqueued: Queued::now(),
                reply,
            })?);
        }
        let mut rows = Vec::with_capacity(answers.len());
        for rx in answers {
            rows.push(self.answer(rx).await?);
        }
        Ok(rows)
    }

    /// Queues one sample's explanation (logits and the Grad-CAM parts of every class, one
    /// backend call) and waits for it.
    pub async fn explain(&self, input: Sample) -> Result<Explanation, ServerError> {
        self.call(|reply| Job::Explain {
            input,
            enqueued: Queued::now(),
            reply,
        })
        .await
    }

    fn stopped(&self) -> ServerError {
        ServerError::Unavailable(format!(
            "backend {} of model {} stopped before answering",
            self.info.name, self.model
        ))
    }
}

/// A backend answer that carries logits (checked before any is handed out).
trait Logits {
    /// The logits, class order.
    fn logits(&self) -> &[f32];
}

impl Logits for Vec<f32> {
    fn logits(&self) -> &[f32] {
        self
    }
}

impl Logits for Explanation {
    fn logits(&self) -> &[f32] {
        &self.logits
    }
}

/// Runs `f`, turning a panic into a runtime error (INTERNAL) that names no input.
fn guarded<T>(f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(BackendError::Runtime(
            "the backend panicked on this batch; it was not computed (the server log has the \
             panic); other requests are not affected"
                .into(),
        ))
    })
}

/// Logits rows of `inputs`, the batch retried in halves while the device is out of memory.
fn predict_rows(
    backend: &mut dyn Backend,
    arch: &ArchSpec,
    inputs: &[&Sample],
) -> Result<Vec<Vec<f32>>, BackendError> {
    let batch = Batch::stack(arch, inputs)?;
    match guarded(|| backend.predict(&batch)) {
        Ok(logits) => (0..inputs.len())
            .map(|k| {
                logits.row(k).map(<[f32]>::to_vec).ok_or_else(|| {
                    BackendError::Runtime(format!("the backend returned no row {k}"))
                })
            })
            .collect(),
        Err(e) if e.is_out_of_memory() && inputs.len() > 1 => {
            tracing::warn!(
                batch = inputs.len(),
                "device out of memory; retrying in halves"
            );
            let (a, b) = inputs.split_at(inputs.len() / 2);
            let mut rows = predict_rows(backend, arch, a)?;
            rows.extend(predict_rows(backend, arch, b)?);
            Ok(rows)
        }
        Err(e) => Err(e),
    }
}

/// Whether an error counts against the backend (not the request).
fn backend_fault(e: &BackendError) -> bool {
    matches!(e, BackendError::Runtime(_) | BackendError::Device(_))
}

/// A worker's backend and what it needs to reload it.
struct Supervisor {
    backend: Option<Box<dyn Backend>>,
    loader: Loader,
    artifacts: ModelArtifacts,
    device: Device,
    info: BackendInfo,
    failures: u32,
    up: Arc<AtomicBool>,
    changed: Arc<Notify>,
    labels: [(&'static str, String); 2],
    stats: Arc<ModelStats>,
}

impl Supervisor {
    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::SeqCst) != up {
            self.changed.notify_one();
        }
    }

    /// Counts one batch's outcome; after too many failures in a row, reloads the backend.
    fn record<T>(&mut self, result: &Result<T, BackendError>) {
        match result {
            Err(e) if backend_fault(e) => self.failures += 1,
            _ => self.failures = 0,
        }
        if self.failures >= MAX_CONSECUTIVE_FAILURES {
            let (model, backend) = (&self.labels[0].1, &self.labels[1].1);
            tracing::error!(
                %model, %backend, failures = self.failures,
                "backend failed batches in a row; reporting NOT_SERVING and reloading it"
            );
            self.set_up(false);
            self.backend = None;
            self.failures = 0;
        }
    }

    /// Loads the backend again; true when it is back.
    fn reload(&mut self) -> bool {
        let loaded = guarded(|| (self.loader)(&self.artifacts, self.device));
        let (model, backend) = (&self.labels[0].1, &self.labels[1].1);
        match loaded {
            Ok(b) => {
                tracing::info!(%model, %backend, "backend reloaded; SERVING");
                self.backend = Some(b);
                self.set_up(true);
                true
            }
            Err(e) => {
                tracing::error!(%model, %backend, error = %e, "backend reload failed; retrying");
                false
            }
        }
    }

    fn unavailable(&self) -> BackendError {
        BackendError::Device(format!(
            "backend {} of model {} failed repeatedly and is being reloaded; retry later or \
             use another backend",
            self.info.name, self.artifacts.manifest.name
        ))
    }

    /// While the backend is down: answer every request UNAVAILABLE and retry the load with a
    /// back-off from 100 ms to 30 s. Returns false when the server has gone.
    fn wait_for_reload(&mut self, rx: &Receiver<Job>) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                if self.reload() {
                    return true;
                }
                next = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(Job::Predict { reply, .. }) => {
                    let _ = reply.send(Err(self.unavailable()));
                }
                Ok(Job::Explain { reply, .. }) => {
                    let _ = reply.send(Err(self.unavailable()));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// The worker loop: form a batch, skip cancelled requests, run it, answer every request.
    fn run(&mut self, rx: Receiver<Job>, arch: &ArchSpec, config: BatchConfig) {
        let labels = self.labels.clone();
        let mut pending: Option<Job> = None;
        loop {
            let Some(backend) = self.backend.as_mut() else {
                if self.wait_for_reload(&rx) {
                    continue;
                }
                return;
            };
            let first = match pending.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return, // every sender dropped: the server is gone
                },
            };
            let (input, enqueued, reply) = match first {
                Job::Explain {
                    input,
                    enqueued,
                    reply,
                } => {
                    if reply.is_closed() {
                        metrics::counter!("osteo_cancelled_total", &labels).increment(1);
                        continue;
                    }
                    metrics::histogram!("osteo_queue_seconds", &labels)
                        .record(enqueued.at.elapsed().as_secs_f64());
                    self.stats.queued(enqueued.at.elapsed());
                    let start = Instant::now();
                    let out =
                        tracing::info_span!(parent: &enqueued.span, "explain").in_scope(|| {
                            Batch::stack(arch, &[&input])
                                .and_then(|b| guarded(|| backend.explain(&b)))
                        });
                    metrics::histogram!("osteo_inference_seconds", &labels)
                        .record(start.elapsed().as_secs_f64());
                    self.stats.executed(1, start.elapsed());
                    self.record(&out);
                    let _ = reply.send(out);
                    continue;
                }
                Job::Predict {
                    input,
                    enqueued,
                    reply,
                } => (input, enqueued, reply),
            };
            let deadline = enqueued.at + config.max_delay;
            let mut jobs = vec![(input, enqueued, reply)];
            while jobs.len() < config.max_batch {
                let now = Instant::now();
                let next = if now >= deadline {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(deadline - now).ok()
                };
                match next {
                    Some(Job::Predict {
                        input,
                        enqueued,
                        reply,
                    }) => jobs.push((input, enqueued, reply)),
                    Some(other) => {
                        pending = Some(other);
                        break;
                    }
                    None => break,
                }
            }
            let before = jobs.len();
            jobs.retain(|(_, _, reply)| !reply.is_closed());
            let skipped = before - jobs.len();
            if skipped > 0 {
                metrics::counter!("osteo_cancelled_total", &labels).increment(skipped as u64);
            }
            if jobs.is_empty() {
                continue;
            }
            let started = Instant::now();
            for (_, enqueued, _) in &jobs {
                metrics::histogram!("osteo_queue_seconds", &labels)
                    .record(started.duration_since(enqueued.at).as_secs_f64());
                self.stats.queued(started.duration_since(enqueued.at));
            }
            // The batch runs in the first call's trace and links to every other call's.
            let span = match jobs.first() {
                Some((_, q, _)) => tracing::info_span!(parent: &q.span, "batch", rows = jobs.len()),
                None => tracing::Span::none(),
            };
            for (_, q, _) in jobs.iter().skip(1) {
                span.follows_from(&q.span);
            }
            let inputs: Vec<&Sample> = jobs.iter().map(|(i, _, _)| i).collect();
            let result = span.in_scope(|| predict_rows(backend.as_mut(), arch, &inputs));
            metrics::histogram!("osteo_batch_size", &labels).record(jobs.len() as f64);
            metrics::histogram!("osteo_inference_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            self.stats.executed(jobs.len(), started.elapsed());
            self.record(&result);
            match result {
                Ok(rows) => {
                    for ((_, _, reply), row) in jobs.into_iter().zip(rows) {
                        let _ = reply.send(Ok(row));
                    }
                }
                Err(e) => {
                    for (_, _, reply) in jobs {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("model", &self.model)
            .field("backend", &self.info.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osteo_core::Tensor;
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver as StdReceiver, Sender as StdSender, channel};

    /// A backend call the fake saw.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Call {
        Predict(usize),
        Explain(usize),
    }

    /// A backend that records its calls and answers each row's first feature as its first
    /// logit. Its first call announces itself and waits for the test's signal, so the test can
    /// queue requests while the backend is busy; batches larger than `oom_above` fail as out of
    /// device memory.
    struct Fake {
        calls: Arc<Mutex<Vec<Call>>>,
        busy: Option<(StdSender<()>, StdReceiver<()>)>,
        oom_above: usize,
    }

    impl Fake {
        fn call(&mut self, call: Call) {
            self.calls.lock().expect("calls").push(call);
            if let Some((started, go)) = self.busy.take() {
                let _ = started.send(());
                let _ = go.recv();
            }
        }
    }

    impl Backend for Fake {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                name: "fake".into(),
                device: Device::Cpu,
                library_version: "test".into(),
            }
        }

        fn predict(&mut self, batch: &Batch) -> Result<Tensor, BackendError> {
            let n = batch.len();
            self.call(Call::Predict(n));
            if n > self.oom_above {
                return Err(BackendError::Device("CUDA error: out of memory".into()));
            }
            let features = batch.tabular.as_ref().expect("tabular");
            let width = features.shape()[1];
            let logits = (0..n)
                .flat_map(|k| [features.data()[k * width], 0.0, 0.0])
                .collect();
            Tensor::new(vec![n, 3], logits).map_err(|e| BackendError::Runtime(e.to_string()))
        }

        fn explain(&mut self, batch: &Batch) -> Result<Explanation, BackendError> {
            self.call(Call::Explain(batch.len()));
            let first = batch.tabular.as_ref().expect("tabular").data()[0];
            Ok(Explanation {
                logits: vec![first, 0.0, 0.0],
                activation: Some(
                    Tensor::new(vec![1, 1, 1], vec![first])
                        .map_err(|e| BackendError::Runtime(e.to_string()))?,
                ),
                alphas: vec![vec![first]; 3],
                tabular_gradients: Vec::new(),
            })
        }
    }

    /// A worker over [`Fake`] on the shipped tabular model, the calls it records, and the
    /// signals of its first (held) call: `started` fires when it begins, `go` lets it finish.
    struct Harness {
        worker: Worker,
        calls: Arc<Mutex<Vec<Call>>>,
        started: StdReceiver<()>,
        go: StdSender<()>,
        features: usize,
    }

    impl Harness {
        fn new(config: BatchConfig, oom_above: usize) -> Self {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/osteo-tabular-v1");
            let artifacts = ModelArtifacts::open(&dir).expect("shipped tabular model");
            let features = artifacts
                .manifest
                .arch
                .tabular
                .as_ref()
                .expect("tabular")
                .in_features;
            let calls = Arc::new(Mutex::new(Vec::new()));
            let (started_tx, started) = channel();
            let (go, go_rx) = channel();
            let busy = Mutex::new(Some((started_tx, go_rx)));
            let c = calls.clone();
            let loader: Loader = Arc::new(move |_, _| {
                Ok(Box::new(Fake {
                    calls: c.clone(),
                    busy: busy.lock().expect("busy").take(),
                    oom_above,
                }) as Box<dyn Backend>)
            });
            let worker = Worker::spawn(
                &artifacts,
                Device::Cpu,
                loader,
                config,
                Arc::new(Notify::new()),
                Arc::new(ModelStats::default()),
            )
            .expect("worker");
            Self {
                worker,
                calls,
                started,
                go,
                features,
            }
        }

        fn input(&self, v: f32) -> Sample {
            Sample {
                image: None,
                tabular: Some(vec![v; self.features]),
            }
        }

        fn predict(&self, v: f32) -> oneshot::Receiver<Result<Vec<f32>, BackendError>> {
            let (reply, rx) = oneshot::channel();
            self.worker
                .submit(Job::Predict {
                    input: self.input(v),
                    enqueued: Queued::now(),
                    reply,
                })
                .expect("queued");
            rx
        }

        fn explain(&self, v: f32) -> oneshot::Receiver<Result<Explanation, BackendError>> {
            let (reply, rx) = oneshot::channel();
            self.worker
                .submit(Job::Explain {
                    input: self.input(v),
                    enqueued: Queued::now(),
                    reply,
                })
                .expect("queued");
            rx
        }

        /// Blocks (off the async threads) until the backend's first call has begun.
        async fn wait_busy(&self) {
            tokio::task::block_in_place(|| self.started.recv().expect("first call"));
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().expect("calls").clone()
        }
    }

    /// A backend that answers, as logits, the nice value of the thread it runs on and the
    /// threads of the compute pool it sees.
    struct Probe;

    impl Backend for Probe {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                name: "probe".into(),
                device: Device::Cpu,
                library_version: "test".into(),
            }
        }

        fn predict(&mut self, batch: &Batch) -> Result<Tensor, BackendError> {
            let nice = rustix::process::getpriority_process(None).unwrap_or(-100);
            let threads = rayon::current_num_threads();
            let logits = (0..batch.len())
                .flat_map(|_| [nice as f32, threads as f32, 0.0])
                .collect();
            Tensor::new(vec![batch.len(), 3], logits)
                .map_err(|e| BackendError::Runtime(e.to_string()))
        }

        fn explain(&mut self, _: &Batch) -> Result<Explanation, BackendError> {
            Err(BackendError::Runtime("not probed".into()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_background_worker_computes_at_the_lowest_priority_on_one_thread() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/osteo-tabular-v1");
        let artifacts = ModelArtifacts::open(&dir).expect("shipped tabular model");
        let features = artifacts
            .manifest
            .arch
            .tabular
            .as_ref()
            .expect("tabular")
            .in_features;
        let loader: Loader = Arc::new(|_, _| Ok(Box::new(Probe) as Box<dyn Backend>));
        let config = BatchConfig {
            background: true,
            ..BatchConfig::from(&crate::config::SchedulerSettings::default())
        };
        let worker = tokio::task::block_in_place(|| {
            Worker::spawn(
                &artifacts,
                Device::Cpu,
                loader,
                config,
                Arc::new(Notify::new()),
                Arc::new(ModelStats::default()),
            )
        })
        .expect("worker");
        let logits = worker
            .predict(Sample {
                image: None,
                tabular: Some(vec![0.0; features]),
            })
            .await
            .expect("predict");
        assert_eq!(logits[0], 19.0, "nice value of the background worker");
        assert_eq!(logits[1], 1.0, "compute threads of the background worker");
    }

    fn continuous(max_batch: usize) -> BatchConfig {
        BatchConfig {
            background: false,
            max_batch,
            ..BatchConfig::from(&crate::config::SchedulerSettings::default())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_runs_at_once_by_default() {
        assert_eq!(
            continuous(32).max_delay,
            Duration::ZERO,
            "continuous batching is the default"
        );
        let h = Harness::new(continuous(32), usize::MAX);
        let rx = h.predict(7.0);
        // No other request ever arrives: the backend runs the lone request as it is.
        h.wait_busy().await;
        assert_eq!(h.calls(), [Call::Predict(1)]);
        h.go.send(()).expect("release");
        assert_eq!(rx.await.expect("answer").expect("ok")[0], 7.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_arrive_while_the_backend_is_busy_form_the_next_batches() {
        let h = Harness::new(continuous(4), usize::MAX);
        let first = h.predict(-1.0);
        h.wait_busy().await;
        let waiting: Vec<_> = (0..6).map(|k| h.predict(k as f32)).collect();
        h.go.send(()).expect("release");
        assert_eq!(first.await.expect("answer").expect("ok")[0], -1.0);
        for (k, rx) in waiting.into_iter().enumerate() {
            assert_eq!(rx.await.expect("answer").expect("ok")[0], k as f32);
        }
        assert_eq!(
            h.calls(),
            [Call::Predict(1), Call::Predict(4), Call::Predict(2)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_requests_are_never_computed() {
        let h = Harness::new(continuous(8), usize::MAX);
        let first = h.predict(-1.0);
        h.wait_busy().await;
        let kept = h.predict(1.0);
        drop(h.predict(2.0));
        drop(h.explain(3.0));
        let kept_too = h.predict(4.0);
        h.go.send(()).expect("release");
        first.await.expect("answer").expect("ok");
        assert_eq!(kept.await.expect("answer").expect("ok")[0], 1.0);
        assert_eq!(kept_too.await.expect("answer").expect("ok")[0], 4.0);
        // The dropped prediction left the batch, the dropped Grad-CAM never ran.
        let calls = h.calls();
        assert_eq!(calls[0], Call::Predict(1));
        assert!(!calls.contains(&Call::Explain(1)), "{calls:?}");
        let rows: usize = calls[1..]
            .iter()
            .map(|c| match c {
                Call::Predict(n) => *n,
                Call::Explain(_) => 0,
            })
            .sum();
        assert_eq!(rows, 2, "{calls:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn explain_requests_interleave_with_batches_in_arrival_order() {
        let h = Harness::new(continuous(8), usize::MAX);
        let first = h.predict(-1.0);
        h.wait_busy().await;
        let a = h.predict(1.0);
        let b = h.predict(2.0);
        let cam = h.explain(3.0);
        let c = h.predict(4.0);
        h.go.send(()).expect("release");
        first.await.expect("answer").expect("ok");
        assert_eq!(a.await.expect("answer").expect("ok")[0], 1.0);
        assert_eq!(b.await.expect("answer").expect("ok")[0], 2.0);
        assert_eq!(cam.await.expect("answer").expect("ok").alphas[2], [3.0]);
        assert_eq!(c.await.expect("answer").expect("ok")[0], 4.0);
        assert_eq!(
            h.calls(),
            [
                Call::Predict(1),
                Call::Predict(2),
                Call::Explain(1),
                Call::Predict(1)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_the_device_has_no_memory_for_is_retried_in_halves() {
        let h = Harness::new(continuous(8), 2);
        // The first request holds the backend while eight more queue up behind it.
        let first = h.predict(-1.0);
        h.wait_busy().await;
        let waiting: Vec<_> = (0..8).map(|k| h.predict(k as f32)).collect();
        h.go.send(()).expect("release");
        assert_eq!(first.await.expect("answer").expect("ok")[0], -1.0);
        for (k, rx) in waiting.into_iter().enumerate() {
            let row = rx.await.expect("answer").expect("every request answered");
            assert_eq!(row[0], k as f32, "row {k} is its own");
        }
        assert_eq!(
            h.calls(),
            [1, 8, 4, 2, 2, 4, 2, 2].map(Call::Predict).to_vec()
        );
        assert!(
            h.worker.is_up(),
            "out of memory on a large batch is not a failure"
        );
    }
}
