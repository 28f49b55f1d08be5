//! `gatewasm-bench`: what a filter costs inside a real Envoy, compared with bare Envoy, the Wasm
//! floor (noop filter), a native Envoy filter and Lua doing the same work.
//!
//! Each row runs Envoy with `--concurrency 1` and a `direct_response` 200 route, loaded by
//! `wrk -t1 -c16`. Rounds are interleaved (bare, floor, native, lua, wasm, then again) so drift
//! hits every row alike; the table shows medians. Usage: `gatewasm-bench --help`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use gatewasm_envoy::bench::{
    median, process_cpu, run_wrk, Row, Scenario, Skipped, WrkOptions, WrkResult, BARE,
};
use gatewasm_envoy::{envoy_binary, workspace_root, FixedUpstream, Reply, HCM_STAT_PREFIX};

const USAGE: &str = "\
gatewasm-bench [options]

  --scenario FILE     scenario JSON (repeatable; default test-harness/envoy/bench/header-rewrite.json)
  --duration SECS     measured wrk run per row and round (default 10)
  --warmup SECS       unmeasured wrk run before each measured one (default 2; 0 for none)
  --connections N     wrk -c (default 16)
  --threads N         wrk -t (default 1)
  --rounds N          interleaved rounds; the table shows medians (default 3)
  --pin               pin Envoy to CPU 0 and wrk to CPU 1 (off by default: on small VMs the
                      cross-CPU wake-ups cost more than sharing, measured 2x slower on 2 vCPUs)
  --require-all       fail instead of skipping rows whose Wasm module is not built
";

struct Options {
    scenarios: Vec<PathBuf>,
    duration: u32,
    warmup: u32,
    connections: u32,
    threads: u32,
    rounds: usize,
    pin: bool,
    require_all: bool,
}

fn parse_args() -> anyhow::Result<Option<Options>> {
    let mut options = Options {
        scenarios: Vec::new(),
        duration: 10,
        warmup: 2,
        connections: 16,
        threads: 1,
        rounds: 3,
        pin: false,
        require_all: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--scenario" => options.scenarios.push(PathBuf::from(value()?)),
            "--duration" => options.duration = value()?.parse().context("--duration")?,
            "--warmup" => options.warmup = value()?.parse().context("--warmup")?,
            "--connections" => options.connections = value()?.parse().context("--connections")?,
            "--threads" => options.threads = value()?.parse().context("--threads")?,
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            "--pin" => options.pin = true,
            "--require-all" => options.require_all = true,
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    if options.scenarios.is_empty() {
        options.scenarios.push(workspace_root().join("test-harness/envoy/bench/header-rewrite.json"));
    }
    if options.rounds == 0 || options.duration == 0 {
        bail!("--rounds and --duration must be at least 1");
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(None) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some(options)) => match run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("gatewasm-bench: {err:#}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("gatewasm-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(options: &Options) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let pin = options.pin && cpus >= 2;
    let load_before = load_average();
    let mut out = String::new();
    for path in &options.scenarios {
        let scenario = Scenario::load(path)?;
        let (rows, skipped) = scenario.rows()?;
        if options.require_all && !skipped.is_empty() {
            let reasons: Vec<String> = skipped.iter().map(|s| format!("{}: {}", s.label, s.reason)).collect();
            bail!("rows not runnable:\n{}", reasons.join("\n"));
        }
        for skip in &skipped {
            eprintln!("skipping row {}: {}", skip.label, skip.reason);
        }
        for row in &rows {
            eprintln!("[{}] preflight {} (echo upstream)", scenario.name, row.label);
            scenario.preflight(row)?;
        }
        let results = measure(&scenario, &rows, options, pin)?;
        out.push_str(&table(&scenario, &rows, &results, &skipped, options));
    }
    let machine = machine_description(cpus, pin, options)?;
    println!(
        "{out}{machine}Load average (1 min) before/after: {load_before} / {} (anything else running skews the numbers)\n",
        load_average()
    );
    Ok(())
}

/// Results per row, in round order.
fn measure(
    scenario: &Scenario,
    rows: &[Row],
    options: &Options,
    pin: bool,
) -> anyhow::Result<Vec<Vec<WrkResult>>> {
    let mut results: Vec<Vec<WrkResult>> = rows.iter().map(|_| Vec::new()).collect();
    let wrk = |secs: u32| WrkOptions {
        threads: options.threads,
        connections: options.connections,
        duration_secs: secs,
        cpus: pin.then(|| vec![1]),
        script: scenario.wrk_script.as_ref().map(|s| workspace_root().join(s)),
    };
    // One upstream for every row of a scenario that forwards (kept until the rounds end).
    let upstream =
        if scenario.upstream { Some(FixedUpstream::start(Reply::status(200).body("ok"))?) } else { None };
    for round in 1..=options.rounds {
        for (row, row_results) in rows.iter().zip(results.iter_mut()) {
            let backend = match &upstream {
                Some(upstream) => row.builder().upstream(upstream.addr()),
                None => row.builder().direct_response(200, "ok"),
            };
            let mut builder = backend.concurrency(1).log_level("warning").component_log_level(None);
            if pin {
                builder = builder.cpu_affinity(vec![0]);
            }
            let envoy = builder.start().with_context(|| format!("starting Envoy for {}", row.label))?;
            let response = envoy.get(&scenario.path)?;
            let status = scenario.expected_status(row);
            if response.status != status {
                bail!("{}: status {} before timing (expected {status})", row.label, response.status);
            }
            scenario.check_response_headers(row, &response)?;
            let url = envoy.url(&scenario.path);
            if options.warmup > 0 {
                run_wrk(&url, &wrk(options.warmup))?;
            }
            // Envoy counts answers by class: a redirect row's are 3xx.
            let counter = format!("http.{HCM_STAT_PREFIX}.downstream_rq_{}xx", status / 100);
            let before = envoy.stat(&counter)?.unwrap_or(0);
            let cpu_before = envoy.pid().and_then(process_cpu);
            let mut result = run_wrk(&url, &wrk(options.duration))?;
            let cpu_after = envoy.pid().and_then(process_cpu);
            let after = envoy.stat(&counter)?.unwrap_or(0);
            let served = after.saturating_sub(before);
            if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
                if served > 0 {
                    result.envoy_cpu_us = Some(a.saturating_sub(b).as_secs_f64() * 1e6 / served as f64);
                }
            }
            if result.non_2xx != 0 {
                bail!("{}: wrk saw {} responses neither 2xx nor 3xx", row.label, result.non_2xx);
            }
            if result.requests == 0 || after.saturating_sub(before) < result.requests {
                bail!(
                    "{}: wrk counted {} requests but Envoy's {counter} grew by {}",
                    row.label,
                    result.requests,
                    after.saturating_sub(before)
                );
            }
            if result.socket_errors != 0 {
                eprintln!("warning: {}: {} socket errors", row.label, result.socket_errors);
            }
            eprintln!(
                "[{}] round {round}/{} {:<28} {:>10.0} req/s  p50 {}  p99 {}  Envoy CPU {} µs/req  socket errors {}",
                scenario.name,
                options.rounds,
                row.label,
                result.rps,
                result.p50.as_deref().unwrap_or("?"),
                result.p99.as_deref().unwrap_or("?"),
                result.envoy_cpu_us.map_or("?".to_string(), |c| format!("{c:.2}")),
                result.socket_errors
            );
            row_results.push(result);
            envoy.stop();
        }
    }
    Ok(results)
}

fn table(
    scenario: &Scenario,
    rows: &[Row],
    results: &[Vec<WrkResult>],
    skipped: &[Skipped],
    options: &Options,
) -> String {
    let medians: Vec<f64> =
        results.iter().map(|r| median(&r.iter().map(|w| w.rps).collect::<Vec<_>>())).collect();
    let added = |rps: f64, bare: f64| 1e6 / rps - 1e6 / bare;
    let bare = rows.iter().zip(&medians).find(|(row, _)| row.key == BARE).map(|(_, &m)| m);
    let baseline = scenario.baseline.as_deref();
    let baseline_added = rows
        .iter()
        .zip(&medians)
        .find(|(row, _)| Some(row.key.as_str()) == baseline)
        .and_then(|(_, &m)| bare.map(|b| added(m, b)));

    let mut out = format!("### Scenario `{}`\n\n{}\n\n", scenario.name, scenario.description);
    out.push_str(&format!(
        "Envoy `--concurrency 1`, `direct_response` 200, `wrk -t{} -c{} -d{}s` on `{}`, median of {} interleaved rounds.\n\n",
        options.threads, options.connections, options.duration, scenario.path, options.rounds
    ));
    if let Some(script) = &scenario.wrk_script {
        out.push_str(&format!(
            "Requests come from the wrk script `{}` (they differ from one to the next; the path above is the one checked before timing).\n\n",
            script.display()
        ));
    }
    let baseline_name = baseline.unwrap_or("baseline");
    out.push_str(&format!(
        "| Configuration | req/s (median) | req/s range | p50 latency | added µs/req vs bare | × {baseline_name} (added cost) | Envoy CPU µs/req (median) |\n"
    ));
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let mut notes = Vec::new();
    for ((row, runs), &rps) in rows.iter().zip(results).zip(&medians) {
        let min = runs.iter().map(|w| w.rps).fold(f64::INFINITY, f64::min);
        let max = runs.iter().map(|w| w.rps).fold(0.0, f64::max);
        let mut by_rps: Vec<&WrkResult> = runs.iter().collect();
        by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let p50 = by_rps.get(by_rps.len() / 2).and_then(|w| w.p50.clone()).unwrap_or_default();
        let (added_cell, ratio_cell) = match bare {
            Some(_) if row.key == BARE => ("—".to_string(), "—".to_string()),
            Some(bare) => {
                let us = added(rps, bare);
                let ratio = match baseline_added {
                    Some(base) if base > 0.0 => format!("{:.2}×", us / base),
                    _ => "n/a".to_string(),
                };
                (format!("{us:+.2}"), ratio)
            }
            None => ("n/a".to_string(), "n/a".to_string()),
        };
        let cpu: Vec<f64> = runs.iter().filter_map(|w| w.envoy_cpu_us).collect();
        let cpu_cell = if cpu.is_empty() { "n/a".to_string() } else { format!("{:.2}", median(&cpu)) };
        let mut label = row.label.clone();
        if let Some(note) = &row.note {
            notes.push(note.clone());
            label.push_str(&format!(" [{}]", notes.len()));
        }
        out.push_str(&format!(
            "| {label} | {rps:.0} | {min:.0}–{max:.0} | {p50} | {added_cell} | {ratio_cell} | {cpu_cell} |\n"
        ));
    }
    for skip in skipped {
        out.push_str(&format!("| {} | not run | | | | | |\n", skip.label));
        notes.push(format!("{} not run: {}", skip.label, skip.reason));
    }
    out.push('\n');
    let bare_runs = rows.iter().zip(results).find(|(row, _)| row.key == BARE).map(|(_, runs)| runs);
    if let Some(runs) = bare_runs.filter(|runs| runs.len() > 1) {
        let min = runs.iter().map(|w| w.rps).fold(f64::INFINITY, f64::min);
        let max = runs.iter().map(|w| w.rps).fold(0.0, f64::max);
        let noise = (1e6 / min - 1e6 / max) / 2.0;
        out.push_str(&format!(
            "Bare Envoy's own round-to-round spread is ±{noise:.2} µs/req: smaller differences (and ratios built on them) are noise.\n\n"
        ));
    }
    for (i, note) in notes.iter().enumerate() {
        out.push_str(&format!("[{}] {note}  \n", i + 1));
    }
    out.push('\n');
    out
}

fn machine_description(cpus: usize, pin: bool, options: &Options) -> anyhow::Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let envoy = envoy_binary()?;
    let envoy_version = command_output(Command::new(&envoy).arg("--version"));
    let wrk_version = command_output(Command::new("wrk").arg("-v"));
    let pinning = if pin {
        "Envoy pinned to CPU 0, wrk to CPU 1"
    } else if options.pin {
        "no pinning (fewer than 2 CPUs)"
    } else {
        "no CPU pinning"
    };
    Ok(format!(
        "Machine: {cpus} CPUs ({model}), Linux {}; {pinning}.  \nEnvoy: {}  \nwrk: {}  \n",
        kernel.trim(),
        envoy_version.split_once("version:").map_or(envoy_version.as_str(), |(_, v)| v).trim(),
        wrk_version.lines().next().unwrap_or("?").trim()
    ))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn command_output(command: &mut Command) -> String {
    match command.output() {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text.lines().find(|l| !l.trim().is_empty()).unwrap_or("?").to_string()
        }
        Err(err) => format!("unavailable ({err})"),
    }
}
