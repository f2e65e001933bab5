//! The figures as one Markdown table (direct, meshlink, nginx, tcp relay, and
//! meshlink's ratios to the other three) followed by the goals, met or
//! missed.

use std::fmt::Write;
use std::time::Duration;

use crate::load::Run;

/// Hops between client and app on every path but the direct one.
const HOPS: f64 = 3.0;
const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")];

/// One path's run with what its hops used meanwhile.
pub struct Measured {
    /// The client's view.
    pub run: Run,
    /// CPU time each hop used during the run.
    pub cpu: Vec<Duration>,
    /// Highest `VmRSS` of each hop sampled during the run, in KiB.
    pub rss_kib: Vec<u64>,
}

impl Measured {
    /// Appends a later round on the same path: requests and CPU time add up,
    /// memory keeps the highest sample.
    pub fn extend(&mut self, later: &Self) {
        self.run.extend(&later.run);
        for (cpu, more) in self.cpu.iter_mut().zip(&later.cpu) {
            *cpu += *more;
        }
        for (kib, sample) in self.rss_kib.iter_mut().zip(&later.rss_kib) {
            *kib = (*kib).max(*sample);
        }
    }
}

/// Direct, meshlink, nginx and tcp relay, in that order.
pub type PerPath<T> = [T; 4];

/// Everything one benchmark run measured.
pub struct Results {
    /// `/proc/loadavg` before the first request.
    pub load_start: String,
    /// `/proc/loadavg` after the last.
    pub load_end: String,
    /// Connections of the paced runs and of the throughput run.
    pub connections: (usize, usize),
    /// Each paced rate with a run per path.
    pub paced: Vec<(f64, PerPath<Measured>)>,
    /// The closed-loop throughput runs.
    pub max: PerPath<Measured>,
    /// `VmRSS` of each hop before any request, in KiB.
    pub idle_kib: PerPath<Vec<u64>>,
    /// `VmHWM` of each hop after the last request, in KiB.
    pub peak_kib: PerPath<Vec<u64>>,
}

/// Renders the table and the goal lines.
pub fn render(r: &Results) -> String {
    let mut t = Table::default();
    let (open, closed) = r.connections;
    for (rate, runs) in &r.paced {
        let k = format!("{}k rps", rate / 1000.0);
        t.row(
            &format!("{k}: achieved rps"),
            runs.each(|m| Some(m.run.throughput())),
            Fmt::Count,
        );
        for (q, name) in QUANTILES {
            let at = runs.each(|m| Some(ms(m.run.quantile(q))));
            t.row(&format!("{k}: {name} latency (ms)"), at, Fmt::Ms);
        }
        for (q, name) in QUANTILES {
            t.row(
                &format!("{k}: added {name} per hop (ms)"),
                added_per_hop(runs, q),
                Fmt::Ms,
            );
        }
        t.row(
            &format!("{k}: CPU per request per hop (µs)"),
            runs.each(cpu_per_request),
            Fmt::Micros,
        );
    }
    let max = &r.max;
    t.row(
        &format!("max throughput, {closed} connections (rps)"),
        max.each(|m| Some(m.run.throughput())),
        Fmt::Count,
    );
    t.row(
        "max throughput: p99 latency (ms)",
        max.each(|m| Some(ms(m.run.quantile(0.99)))),
        Fmt::Ms,
    );
    t.row(
        "max throughput: CPU per request per hop (µs)",
        max.each(cpu_per_request),
        Fmt::Micros,
    );
    let last_rate = r
        .paced
        .last()
        .map(|(rate, runs)| (format!("{}k rps, {open} connections", rate / 1000.0), runs));
    for (role, pick) in [
        ("sidecar", sidecar as fn(&[u64]) -> Option<f64>),
        ("gateway", gateway),
    ] {
        t.row(
            &format!("{role} RSS idle (MiB)"),
            r.idle_kib.each(|k| pick(k)),
            Fmt::Mib,
        );
        if let Some((label, runs)) = &last_rate {
            t.row(
                &format!("{role} RSS at {label} (MiB)"),
                runs.each(|m| pick(&m.rss_kib)),
                Fmt::Mib,
            );
        }
        t.row(
            &format!("{role} RSS at max throughput (MiB)"),
            max.each(|m| pick(&m.rss_kib)),
            Fmt::Mib,
        );
        t.row(
            &format!("{role} peak RSS, VmHWM (MiB)"),
            r.peak_kib.each(|k| pick(k)),
            Fmt::Mib,
        );
    }

    let mut out = format!(
        "load average at start: {} (end: {}); {} CPUs\n\n",
        r.load_start,
        r.load_end,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    out.push_str(&t.text);
    let failed = |i: usize| -> u64 {
        let paced: u64 = r.paced.iter().map(|(_, runs)| runs[i].run.errors).sum();
        paced + r.max[i].run.errors
    };
    let _ = writeln!(
        out,
        "\nfailed requests (all runs): direct {}, meshlink {}, nginx {}, tcp relay {}",
        failed(0),
        failed(1),
        failed(2),
        failed(3)
    );
    out.push_str(&goals(r));
    out
}

/// The three goals, each with its figure and met/missed.
fn goals(r: &Results) -> String {
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let mut out = String::new();
    if let Some((rate, runs)) = r.paced.first() {
        let [_, mesh, nginx, relay] = added_per_hop(runs, 0.99).map(|v| v.unwrap_or(f64::NAN));
        let _ = writeln!(
            out,
            "goal: added p99 per hop at {rate} rps < 0.5 ms: {mesh:.3} ms \
             (nginx {nginx:.3} ms, tcp relay {relay:.3} ms): {}",
            verdict(mesh < 0.5)
        );
    }
    let ratio = r.max[1].run.throughput() / r.max[2].run.throughput();
    let _ = writeln!(
        out,
        "goal: max throughput >= nginx's: {:.0} vs {:.0} rps ({ratio:.2}x): {}",
        r.max[1].run.throughput(),
        r.max[2].run.throughput(),
        verdict(ratio >= 1.0)
    );
    let loaded = sidecar(&r.max[1].rss_kib).unwrap_or(f64::NAN);
    let _ = writeln!(
        out,
        "goal: sidecar RSS under load < 15 MiB: {loaded:.1} MiB at max throughput ({} connections): {}",
        r.connections.1,
        verdict(loaded < 15.0)
    );
    out
}

/// (path − direct) / hops at quantile `q`, in ms (none for the direct path).
fn added_per_hop(runs: &PerPath<Measured>, q: f64) -> PerPath<Option<f64>> {
    let direct = ms(runs[0].run.quantile(q));
    let mut added = runs.each(|m| Some((ms(m.run.quantile(q)) - direct) / HOPS));
    added[0] = None;
    added
}

/// Average CPU time per answered request per hop, in µs.
fn cpu_per_request(m: &Measured) -> Option<f64> {
    if m.cpu.is_empty() || m.run.ok == 0 {
        return None;
    }
    let total: Duration = m.cpu.iter().sum();
    Some(total.as_secs_f64() * 1e6 / m.run.ok as f64 / m.cpu.len() as f64)
}

/// The larger of the two sidecars (hops 0 and 2), in MiB.
fn sidecar(kib: &[u64]) -> Option<f64> {
    Some(kib.first()?.max(kib.get(2)?).to_owned() as f64 / 1024.0)
}

/// The gateway (hop 1), in MiB.
fn gateway(kib: &[u64]) -> Option<f64> {
    Some(*kib.get(1)? as f64 / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

trait Each<T> {
    fn each(&self, f: impl Fn(&T) -> Option<f64>) -> PerPath<Option<f64>>;
}

impl<T> Each<T> for PerPath<T> {
    fn each(&self, f: impl Fn(&T) -> Option<f64>) -> PerPath<Option<f64>> {
        self.each_ref().map(f)
    }
}

#[derive(Clone, Copy)]
enum Fmt {
    Count,
    Ms,
    Micros,
    Mib,
}

impl Fmt {
    fn show(self, v: Option<f64>) -> String {
        match v {
            None => "—".into(),
            Some(v) => match self {
                Self::Count => format!("{v:.0}"),
                Self::Ms => format!("{v:.3}"),
                Self::Micros | Self::Mib => format!("{v:.1}"),
            },
        }
    }
}

struct Table {
    text: String,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            text: "| measure | direct | meshlink | nginx | tcp relay \
                   | meshlink/direct | meshlink/nginx | meshlink/tcp relay |\n\
                   |---|---|---|---|---|---|---|---|\n"
                .into(),
        }
    }
}

impl Table {
    fn row(&mut self, label: &str, [direct, mesh, nginx, relay]: PerPath<Option<f64>>, fmt: Fmt) {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b.abs() > f64::EPSILON => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        let _ = writeln!(
            self.text,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            fmt.show(direct),
            fmt.show(mesh),
            fmt.show(nginx),
            fmt.show(relay),
            ratio(mesh, direct),
            ratio(mesh, nginx),
            ratio(mesh, relay),
        );
    }
}
