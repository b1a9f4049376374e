//! Thin PyO3 binding layer over the pure-Rust engine core (`pipeline-core`): convert
//! arguments, call the core, map errors. No logic of its own.
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pipeline_core as core;
use pipeline_core::EngineError as CoreError;
use pyo3::buffer::{PyBuffer, PyUntypedBuffer};
use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMapping, PySequence};

mod errors {
    pyo3::import_exception!(pipeline.errors, JournalError);
    pyo3::import_exception!(pipeline.errors, JournalCorrupt);
    pyo3::import_exception!(pipeline.errors, RecipeError);
    pyo3::import_exception!(pipeline.errors, EngineError);
}

/// Map each core error variant onto its own class of `pipeline.errors`.
fn to_py(py: Python<'_>, err: CoreError) -> PyErr {
    match err {
        CoreError::Journal(m) => errors::JournalError::new_err(m),
        CoreError::JournalCorrupt { index, reason } => {
            let e = errors::JournalCorrupt::new_err(format!("record {index}: {reason}"));
            // Best effort: the message names the record either way.
            let _ = e.value(py).setattr("index", index);
            e
        }
        CoreError::Recipe(m) => errors::RecipeError::new_err(m),
        CoreError::Engine(m) => errors::EngineError::new_err(m),
    }
}

/// The one place the binding releases the GIL. Inputs must already be owned Rust values
/// (or, for the frames of a batch, held as [`Frames`] explains).
fn without_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.detach(f)
}

/// One typed decision (see docs/PROTOCOL.md, Decision).
#[pyclass(frozen, module = "pipeline._engine")]
struct Decision(core::Decision);

#[pymethods]
impl Decision {
    #[getter]
    fn task(&self) -> &str {
        &self.0.task
    }
    #[getter]
    fn status(&self) -> &'static str {
        self.0.status.as_str()
    }
    #[getter]
    fn process(&self) -> &str {
        &self.0.process
    }
    #[getter]
    fn attempt(&self) -> u64 {
        self.0.attempt
    }
    #[getter]
    fn version(&self) -> u64 {
        self.0.version
    }
    #[getter]
    fn reason(&self) -> &str {
        &self.0.reason
    }
    #[getter]
    fn rule(&self) -> Option<&str> {
        self.0.rule.as_deref()
    }
    #[getter]
    fn level(&self) -> Option<&'static str> {
        self.0.level.map(|l| l.as_str())
    }
    #[getter]
    fn retry_after_ms(&self) -> u64 {
        self.0.retry_after_ms
    }
    #[getter]
    fn blocked(&self) -> bool {
        self.0.blocked
    }
    #[getter]
    fn error_type(&self) -> Option<&str> {
        self.0.error.as_ref().map(|e| e.kind.as_str())
    }
    #[getter]
    fn error_message(&self) -> Option<&str> {
        self.0.error.as_ref().map(|e| e.message.as_str())
    }
    fn __repr__(&self) -> String {
        format!(
            "Decision(task={:?}, status={:?}, version={})",
            &*self.0.task,
            self.0.status.as_str(),
            self.0.version
        )
    }
}

/// The outcome of one `Engine.apply_batch` call.
#[pyclass(frozen, module = "pipeline._engine")]
struct Batch {
    out: core::BatchOut,
    decisions: Py<PyBytes>,
    events: Option<Py<PyBytes>>,
}

#[pymethods]
impl Batch {
    #[getter]
    fn decisions(&self, py: Python<'_>) -> Py<PyBytes> {
        self.decisions.clone_ref(py)
    }
    #[getter]
    fn events(&self, py: Python<'_>) -> Option<Py<PyBytes>> {
        self.events.as_ref().map(|e| e.clone_ref(py))
    }
    #[getter]
    fn commit_index<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.out.commit_index.as_deref().map(|b| PyBytes::new(py, b))
    }
    #[getter]
    fn event_index<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.out.event_index.as_deref().map(|b| PyBytes::new(py, b))
    }
    #[getter]
    fn commits(&self) -> usize {
        self.out.commits
    }
    #[getter]
    fn stop(&self) -> Option<&str> {
        self.out.stop.as_deref()
    }
    #[getter]
    fn newly_blocked(&self) -> Vec<(String, String)> {
        self.out.newly_blocked.clone()
    }
    #[getter]
    fn malformed(&self) -> Vec<String> {
        self.out.malformed.clone()
    }
    #[getter]
    fn heavy_committed<'py>(&self, py: Python<'py>) -> Vec<(&str, Bound<'py, PyBytes>)> {
        let list = self.out.heavy_committed.iter();
        list.map(|(k, d)| (k.as_str(), PyBytes::new(py, d)))
            .collect()
    }
    #[getter]
    fn followups<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        let list = self.out.followups.iter();
        list.map(|t| PyBytes::new(py, t)).collect()
    }
    #[getter]
    fn heavy_dropped<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        let list = self.out.heavy_dropped.iter();
        list.map(|d| PyBytes::new(py, d)).collect()
    }
    fn __len__(&self) -> usize {
        self.out.len()
    }
    fn __getitem__(&self, index: isize) -> PyResult<Decision> {
        let len = self.out.len() as isize;
        let i = if index < 0 { index + len } else { index };
        match usize::try_from(i).ok().and_then(|i| self.out.decision(i)) {
            Some(d) => Ok(Decision(d)),
            None => Err(PyIndexError::new_err("decision index out of range")),
        }
    }
}

/// The engine. A Mutex (not `unsendable`) so that any Python thread may call it (e.g. a
/// housekeeping thread calling `tick`); the lock is taken only after the GIL is released in
/// `apply_batch`, so a thread waiting for the GIL never holds it.
#[pyclass(frozen, module = "pipeline._engine")]
struct Engine {
    inner: Mutex<core::Engine>,
}

impl Engine {
    fn lock(&self) -> Result<MutexGuard<'_, core::Engine>, CoreError> {
        self.inner
            .lock()
            .map_err(|_| CoreError::Engine("engine poisoned by a panic".into()))
    }

    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut core::Engine) -> Result<T, CoreError>,
    ) -> PyResult<T> {
        self.lock()
            .and_then(|mut e| f(&mut e))
            .map_err(|e| to_py(py, e))
    }
}

/// `{"events": [...]}` around `count` encoded events.
fn wrap_events(count: usize, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    core::msgpack::put::map_len(&mut out, 1);
    core::msgpack::put::str(&mut out, "events");
    core::msgpack::put::array_len(&mut out, count);
    out.extend_from_slice(body);
    out
}

/// The frames of one batch, readable without the GIL: each `bytes` frame in place (a
/// reference to it is held here), any other buffer copied.
struct Frames<'py> {
    held: Vec<Bound<'py, PyBytes>>,
    copies: Vec<Vec<u8>>,
    /// (address, length) of each frame's bytes, in order.
    spans: Vec<(usize, usize)>,
}

impl<'py> Frames<'py> {
    fn new(frames: &Bound<'py, PyAny>) -> PyResult<Self> {
        let seq = frames.cast::<PySequence>()?;
        let n = seq.len()?;
        let mut out = Frames {
            held: Vec::with_capacity(n),
            copies: Vec::new(),
            spans: Vec::with_capacity(n),
        };
        for item in seq.try_iter()? {
            let item = item?;
            let bytes = match item.cast_into::<PyBytes>() {
                Ok(b) => b,
                Err(e) => {
                    let copy = PyBuffer::<u8>::get(e.into_inner().as_any()).and_then(|b| b.to_vec(frames.py()));
                    let copy = copy.map_err(|_| PyTypeError::new_err("frames must be bytes (or buffers of bytes)"))?;
                    out.spans.push((copy.as_ptr() as usize, copy.len()));
                    out.copies.push(copy);
                    continue;
                }
            };
            let b = bytes.as_bytes();
            out.spans.push((b.as_ptr() as usize, b.len()));
            out.held.push(bytes);
        }
        Ok(out)
    }

    /// The frames as slices, for use without the GIL while `self` lives.
    fn slices(spans: &[(usize, usize)]) -> Vec<&[u8]> {
        let slice = |&(ptr, len): &(usize, usize)| {
            // SAFETY: each span is the data of a `bytes` object in `held` or of a Vec in
            // `copies`. A `bytes` object is immutable and its data lives inside the object,
            // which CPython never moves; the reference in `held` keeps it alive (whatever
            // other threads do to the caller's sequence) until `Frames` drops, after the
            // batch. The copies are owned by `copies`, never touched while the batch runs.
            unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
        };
        spans.iter().map(slice).collect()
    }
}

/// The sink's verdicts on heavy descriptors: `{descriptor bytes: None | reason}`.
fn owned_vetted(vetted: Option<&Bound<'_, PyAny>>) -> PyResult<core::Vetted> {
    let mut out = core::Vetted::default();
    let Some(vetted) = vetted.filter(|v| !v.is_none()) else {
        return Ok(out);
    };
    for item in vetted.cast::<PyMapping>()?.items()?.iter() {
        let (desc, reason): (Bound<'_, PyBytes>, Option<String>) = item.extract()?;
        out.insert(desc.as_bytes().to_vec(), reason);
    }
    Ok(out)
}

fn fsync_policy(policy: &str, interval_ms: u64) -> Result<core::Fsync, CoreError> {
    match policy {
        "always" => Ok(core::Fsync::Always),
        "interval" => Ok(core::Fsync::Interval(Duration::from_millis(interval_ms))),
        "never" => Ok(core::Fsync::Never),
        _ => Err(CoreError::Engine(format!(
            "unknown fsync policy {policy:?}"
        ))),
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (journal_dir, *, fsync = "interval", fsync_interval_ms = 10, strict = false, recipes = None, heavy_dir = None, dedup_window_ms = 0, dedup_max_entries = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        journal_dir: &str,
        fsync: &str,
        fsync_interval_ms: u64,
        strict: bool,
        recipes: Option<&str>,
        heavy_dir: Option<&str>,
        dedup_window_ms: u64,
        dedup_max_entries: usize,
    ) -> PyResult<Self> {
        let open = || -> Result<core::Engine, CoreError> {
            let config = core::Config {
                fsync: fsync_policy(fsync, fsync_interval_ms)?,
                strict,
                heavy_dir: heavy_dir.map(Into::into),
                horizon: core::Horizon {
                    window_ms: dedup_window_ms,
                    max_entries: dedup_max_entries,
                },
            };
            let audit = core::make_audit(recipes.map(Path::new))?;
            core::Engine::open(Path::new(journal_dir), config, audit)
        };
        let engine = without_gil(py, open).map_err(|e| to_py(py, e))?;
        Ok(Engine {
            inner: Mutex::new(engine),
        })
    }

    fn register(
        &self,
        py: Python<'_>,
        process: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
    ) -> PyResult<()> {
        self.with(py, |e| e.register(process, &inputs, &outputs))
    }

    #[pyo3(signature = (frames, vetted = None))]
    fn apply_batch(
        &self,
        py: Python<'_>,
        frames: &Bound<'_, PyAny>,
        vetted: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Batch> {
        let frames = Frames::new(frames)?;
        let vetted = owned_vetted(vetted)?;
        let spans = &frames.spans;
        let apply = || {
            let slices = Frames::slices(spans);
            self.lock()
                .and_then(|mut e| e.apply_batch_vetted(&slices, &vetted))
        };
        let out = without_gil(py, apply);
        drop(frames);
        let out = out.map_err(|e| to_py(py, e))?;
        let decisions = PyBytes::new(py, &out.decisions_msg).unbind();
        let events = out
            .events_msg
            .as_deref()
            .map(|b| PyBytes::new(py, b).unbind());
        Ok(Batch {
            out,
            decisions,
            events,
        })
    }

    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let snap = self.with(py, |e| Ok(e.snapshot()))?;
        Ok(PyBytes::new(py, &snap))
    }

    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<(u64, Bound<'py, PyBytes>)>> {
        let found = self.with(py, |e| Ok(e.get(key).map(|(v, b)| (v, b.to_vec()))))?;
        Ok(found.map(|(v, b)| (v, PyBytes::new(py, &b))))
    }

    #[getter]
    fn version(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |e| Ok(e.version()))
    }

    /// The de-duplication table's figures: entries, clock_ms, horizon_ms, forgotten, clamped.
    fn dedup_stats(&self, py: Python<'_>) -> PyResult<std::collections::HashMap<&'static str, u64>> {
        let st = self.with(py, |e| Ok(e.dedup_stats()))?;
        Ok([
            ("entries", st.entries as u64),
            ("clock_ms", st.clock_ms),
            ("horizon_ms", st.horizon_ms),
            ("forgotten", st.forgotten),
            ("clamped", st.clamped),
        ]
        .into_iter()
        .collect())
    }

    fn blocked(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with(py, |e| Ok(e.blocked()))
    }

    fn unblock(&self, py: Python<'_>, process: &str) -> PyResult<bool> {
        self.with(py, |e| Ok(e.unblock(process)))
    }

    #[allow(clippy::type_complexity)]
    fn unreleased<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(u64, Option<Bound<'py, PyBytes>>, Vec<Bound<'py, PyBytes>>)> {
        let (upto, events, tasks) = self.with(py, |e| {
            let (upto, events, tasks) = e.unreleased();
            let body: Vec<u8> = events.concat();
            let events = (!events.is_empty()).then(|| wrap_events(events.len(), &body));
            Ok((
                upto,
                events,
                tasks.iter().map(|t| t.to_vec()).collect::<Vec<_>>(),
            ))
        })?;
        let events = events.map(|b| PyBytes::new(py, &b));
        let tasks = tasks.iter().map(|t| PyBytes::new(py, t)).collect();
        Ok((upto, events, tasks))
    }

    fn mark_released(&self, py: Python<'_>, upto_version: u64) -> PyResult<()> {
        self.with(py, |e| e.mark_released(upto_version))
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, || self.lock().and_then(|mut e| e.flush())).map_err(|e| to_py(py, e))
    }

    fn tick(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |e| e.tick())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        without_gil(py, || self.lock().and_then(|mut e| e.close())).map_err(|e| to_py(py, e))
    }
}

/// Check a journal's checksums and hash chain: (records_ok, first_bad_index, reason).
#[pyfunction]
fn verify_journal(
    py: Python<'_>,
    journal_dir: &str,
) -> PyResult<(u64, Option<u64>, Option<String>)> {
    without_gil(py, || core::verify(Path::new(journal_dir))).map_err(|e| to_py(py, e))
}

/// (finite, min, max) of a C-contiguous buffer of little-endian float64, scanned by the
/// engine's array-rule code (split across cores) without the GIL. min/max are NaN for an
/// empty buffer.
#[pyfunction]
fn scan_f64(py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<(bool, f64, f64)> {
    let buf = PyUntypedBuffer::get(buffer)?;
    if !buf.is_c_contiguous() || buf.len_bytes() % 8 != 0 {
        return Err(PyValueError::new_err(
            "scan_f64 needs a C-contiguous buffer of float64 (a whole number of 8-byte items)",
        ));
    }
    let (ptr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
    let stats = without_gil(py, || {
        // SAFETY: `buf` holds the exporter's buffer (and a reference to it) until it drops at
        // the end of this function, so `ptr..ptr + len` stays valid and C-contiguous while the
        // scan runs; the scan only reads. A Python thread writing into the same buffer during
        // the scan could change the figures, not memory safety of this read of plain bytes.
        let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        core::audit::scan_f64(data)
    });
    drop(buf);
    if stats.count == 0 {
        return Ok((true, f64::NAN, f64::NAN));
    }
    Ok((stats.finite, stats.min, stats.max))
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Engine>()?;
    m.add_class::<Batch>()?;
    m.add_class::<Decision>()?;
    m.add_function(wrap_pyfunction!(verify_journal, m)?)?;
    m.add_function(wrap_pyfunction!(scan_f64, m)?)?;
    Ok(())
}
