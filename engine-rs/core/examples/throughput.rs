//! Commits per second through `Engine::apply_batch`, without Python.
//! `cargo run --release -p pipeline-core --example throughput -- [updates] [batch] [never|interval|always] [plain|bench]`
//!
//! `bench` runs the workload of `pipeline bench engine`: every update carries
//! `args = {n, tag}` (and the empty heavy/signals/tasks/error fields), an audit recipe with
//! two input rules is on, 8 frames go to each `apply_batch`, and `tick()` follows each call.
use std::time::{Duration, Instant};

use pipeline_core::msgpack::put;
use pipeline_core::{make_audit, Config, Engine, Fsync};

const RECIPE: &str = r#"
[process.p]
level = "B"
rules = [
  { name = "n_positive", field = "input.n", min = 0 },
  { name = "tag_short", field = "input.tag", max_len = 16 },
]
"#;

fn update(b: &mut Vec<u8>, i: usize, key: &str, read: u64, bench: bool) {
    put::map_len(b, if bench { 13 } else { 8 });
    if bench {
        put::str(b, "heavy");
        put::map_len(b, 0);
        put::str(b, "error");
        put::nil(b);
        put::str(b, "signals");
        put::array_len(b, 0);
        put::str(b, "tasks");
        put::array_len(b, 0);
        put::str(b, "args");
        put::map_len(b, 2);
        put::str(b, "n");
        put::uint(b, i as u64);
        put::str(b, "tag");
        put::str(b, "bench");
    }
    for (k, v) in [
        ("task", format!("t{i}")),
        ("process", "p".into()),
        ("worker", "w".into()),
    ] {
        put::str(b, k);
        put::str(b, &v);
    }
    put::str(b, "attempt");
    put::uint(b, 1);
    put::str(b, "reads");
    put::map_len(b, 1);
    put::str(b, key);
    put::uint(b, read);
    put::str(b, "data");
    put::map_len(b, 1);
    put::str(b, key);
    put::uint(b, i as u64);
    put::str(b, "run_us");
    put::uint(b, 3);
    put::str(b, "base");
    put::nil(b);
}

fn batches(n: usize, batch: usize, keys: usize, bench: bool) -> Vec<Vec<u8>> {
    let mut versions = vec![0u64; keys];
    (0..n.div_ceil(batch))
        .map(|j| {
            let range = j * batch..((j + 1) * batch).min(n);
            let mut b = Vec::new();
            put::map_len(&mut b, 1);
            put::str(&mut b, "updates");
            put::array_len(&mut b, range.len());
            for i in range {
                update(&mut b, i, &format!("k{}", i % keys), versions[i % keys], bench);
                versions[i % keys] = i as u64 + 1;
            }
            b
        })
        .collect()
}

/// This process's CPU time (user + system) in seconds, from /proc (Linux only; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    // Fields 14 and 15 of stat (utime, stime, in ticks) are the 12th and 13th after ')'.
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let batch = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let fsync = match args.get(3).map(String::as_str) {
        Some("always") => Fsync::Always,
        Some("interval") => Fsync::Interval(Duration::from_millis(10)),
        _ => Fsync::Never,
    };
    let bench = args.get(4).map(String::as_str) == Some("bench");
    let keys = batch.min(1000);
    let frames = batches(n, batch, keys, bench);
    let per_call = if bench { 8 } else { 1 };
    let work: Vec<Vec<Vec<u8>>> = frames.chunks(per_call).map(<[_]>::to_vec).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(&recipe, RECIPE).expect("recipe");
    let audit = make_audit(bench.then_some(recipe.as_path())).expect("audit");
    let mut e = Engine::open(
        dir.path(),
        Config {
            fsync,
            strict: false,
            ..Config::default()
        },
        audit,
    )
    .expect("open");
    let outputs: Vec<String> = (0..keys).map(|k| format!("k{k}")).collect();
    let inputs: Vec<String> = if bench {
        vec!["n".into(), "tag".into()]
    } else {
        Vec::new()
    };
    e.register("p", &inputs, &outputs).expect("register");
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let mut lat = Vec::with_capacity(work.len());
    let commits: usize = work
        .iter()
        .map(|f| {
            let t = Instant::now();
            let commits = e.apply_batch(f).expect("batch").commits;
            lat.push(t.elapsed());
            if bench {
                e.tick().expect("tick");
            }
            commits
        })
        .sum();
    e.flush().expect("flush");
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    assert_eq!((commits as u64, e.version()), (n as u64, n as u64));
    let per_cpu = if cpu > 0.0 { n as f64 / cpu } else { f64::NAN };
    lat.sort();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    let max = lat.last().copied().unwrap_or_default();
    let slow = lat.iter().filter(|d| d.as_micros() >= 1000).count();
    println!(
        "{fsync:?} batch={batch} bench={bench}: {:.0} commits/s wall, {per_cpu:.0} per CPU-second; \
         apply_batch p99 {p99:.2?}, max {max:.2?}, {slow} of {} >= 1 ms",
        n as f64 / secs,
        lat.len()
    );
}
