//! The run report: JSON for machines, Markdown for people, SVG plots for
//! the SRE on call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// What the delivery check found. Everything but `expected`, `delivered`
/// and `unexpected` must be 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verification {
    /// Deliveries owed: every accepted message times its member devices.
    pub expected: u64,
    /// Deliveries the app saw.
    pub delivered: u64,
    /// Owed deliveries that never came.
    pub lost: u64,
    /// Deliveries the app saw twice.
    pub duplicated: u64,
    /// Deliveries out of the conversation's order (or at another seq than
    /// the sender was told).
    pub reordered: u64,
    /// Deliveries to a device whose account is not a member.
    pub misdelivered: u64,
    /// Two messages accepted at the same place of one conversation.
    pub order_conflicts: u64,
    /// Deliveries of messages whose submit failed or timed out (the relay may
    /// have stored it); informational.
    pub unexpected: u64,
}

impl Verification {
    /// Whether delivery was exactly once and in order everywhere.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.misdelivered == 0
            && self.order_conflicts == 0
    }
}

/// How the devices lived through lost connections (a relay killed or
/// drained) and how long deliveries stalled: the recovery figures of a
/// failover drill.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recovery {
    /// Devices that lost their connection at least once.
    pub devices_disconnected: u64,
    /// Lost connections (`Event::Disconnected`), all devices.
    pub disconnects: u64,
    /// Reconnections (`Event::Reconnected`), all devices.
    pub reconnects: u64,
    /// Per disconnect, from `Event::Disconnected` (the first of a chain of
    /// failed attempts) to the device's first delivery after reconnecting:
    /// the "time to receive again" (milliseconds). It starts when the
    /// device *noticed*: a killed relay is noticed after the client's idle
    /// timeout, a draining one at once.
    pub time_to_receive_again: Latency,
    /// Devices that were disconnected at the end of the run and had received
    /// nothing since (a device with no traffic after its reconnect also
    /// counts).
    pub never_received_again: u64,
    /// Earliest disconnect, seconds since the schedule started.
    pub first_disconnect_at_secs: Option<f64>,
    /// Latest "received again", seconds since the schedule started: with the
    /// time a fault was injected, "until every device received again".
    pub last_received_again_at_secs: Option<f64>,
    /// Longest time without any delivery to any device, between the first
    /// delivery and the end of the schedule (when deliveries were due all
    /// the time), seconds.
    pub longest_delivery_gap_secs: f64,
    /// When that silence began, seconds since the schedule started.
    pub longest_delivery_gap_from_secs: f64,
}

/// Attachments sent and fetched (traffic with `attachment_bytes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Attachments {
    /// Uploads finished.
    pub uploaded: u64,
    /// Uploads that failed (after the SDK's own retries).
    pub upload_failed: u64,
    /// Downloads finished, by recipient devices.
    pub downloaded: u64,
    /// Downloads that failed, or came back with other bytes.
    pub download_failed: u64,
    /// Ciphertext uploaded, bytes.
    pub bytes_up: u64,
    /// Ciphertext downloaded, bytes.
    pub bytes_down: u64,
    /// Upload start -> upload done.
    pub upload: Latency,
    /// Delivery of the reference -> download done, at each recipient.
    pub download: Latency,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the schedule started.
    pub second: u64,
    /// Submits accepted in this second.
    pub accepted: u64,
    /// Deliveries in this second.
    pub delivered: u64,
    /// Median submit -> delivered latency of this second's deliveries.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Population scale.
    pub scale: f64,
    /// Rate scale.
    pub rate_scale: f64,
    /// Accounts simulated.
    pub accounts: usize,
    /// Devices connected (each a real QUIC client).
    pub devices: usize,
    /// Conversations.
    pub conversations: usize,
    /// Time to create accounts, devices and conversations.
    pub provision_secs: f64,
    /// Time to connect and authenticate every device.
    pub connect_secs: f64,
    /// Length of the traffic schedule as run.
    pub schedule_secs: f64,
    /// Schedule plus settling.
    pub elapsed_secs: f64,
    /// Submits started.
    pub sent: u64,
    /// Submits accepted.
    pub accepted: u64,
    /// Submits that failed (after their retries).
    pub failed: u64,
    /// Submits sent again with the same message id after the relay
    /// answered UNAVAILABLE (store briefly unreachable), all attempts.
    #[serde(default)]
    pub retried: u64,
    /// Failures by message.
    pub errors: HashMap<String, u64>,
    /// Accepted submits per second over the schedule.
    pub accepted_per_sec: f64,
    /// Deliveries per second over the whole run.
    pub delivered_per_sec: f64,
    /// Most deliveries in one second.
    pub peak_delivered_per_sec: u64,
    /// Intended send time -> Accepted.
    pub submit_to_accepted: Latency,
    /// Intended send time -> delivered at each recipient device.
    pub submit_to_delivered: Latency,
    /// Exactly-once and order check.
    pub verification: Verification,
    /// Disconnects, reconnects, time to receive again, delivery stalls.
    #[serde(default)]
    pub recovery: Recovery,
    /// When the schedule started (Unix milliseconds): places faults
    /// injected from outside (drill scripts) on the report's time axis.
    #[serde(default)]
    pub started_at_unix_ms: u64,
    /// UDP datagrams the kernel dropped, relay side and load tester side.
    pub udp: crate::udp::UdpReport,
    /// Attachments, when the scenario sends any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Attachments>,
    /// For one slice of a run (`--slice`): what the merge needs. Its
    /// `verification` is empty; the merge of all slices gives the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<crate::slice::SliceData>,
    /// Per-second figures.
    pub timeline: Vec<Second>,
}

impl Report {
    /// Writes `<name>.json`, `<name>.md`, `<name>-throughput.svg` and
    /// `<name>-latency.svg` into `dir`; returns the paths. The name is the
    /// scenario's, with `-slice-<k>-of-<n>` for a slice of a run.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = match &self.slice {
            Some(s) => format!(
                "{}-slice-{}-of-{}",
                self.scenario, s.slice.index, s.slice.count
            ),
            None => self.scenario.clone(),
        };
        let json = dir.join(format!("{name}.json"));
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let md = dir.join(format!("{name}.md"));
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        let tp = dir.join(format!("{name}-throughput.svg"));
        self.plot_throughput(&tp)?;
        let lat = dir.join(format!("{name}-latency.svg"));
        self.plot_latency(&lat)?;
        Ok(vec![json, md, tp, lat])
    }

    /// The UDP drop table: the latencies above only measure Herold when
    /// both sides dropped nothing.
    fn udp_markdown(&self) -> String {
        let u = &self.udp;
        let n = |v: Option<u64>| v.map_or_else(|| "not measured".to_owned(), |v| v.to_string());
        let relay = match (&u.relay, &u.relay_error) {
            (Some(r), _) => format!("{} / {} / {}", r.received, r.sent, r.drops),
            (None, Some(e)) => format!("not measured ({e})"),
            (None, None) => "not measured".to_owned(),
        };
        let verdict = if u.dropped_any() {
            "**Datagrams were dropped**: the latencies above include QUIC loss \
             recovery and measure the kernel's socket buffers, not only Herold."
        } else if u.relay.is_some() && u.loadtest_drops.is_some() {
            "No datagram was dropped on either side."
        } else {
            "Drops were not measured on both sides (give `--relay-metrics`)."
        };
        format!(
            "| UDP datagrams (kernel, over the run) | |\n|---|---|\n\
             | relays: received / sent / dropped | {relay} |\n\
             | load tester: dropped (receive buffer per socket) | {own} ({buf}) |\n\
             | host receive-buffer errors (all processes) | {host} |\n\n\
             {verdict}\n",
            own = n(u.loadtest_drops),
            buf = u
                .loadtest_recv_buffer_bytes
                .map_or_else(|| "?".to_owned(), |b| format!("{} KiB", b / 1024)),
            host = n(u.host_rcvbuf_errors),
        )
    }

    /// The recovery table: lost connections and how long until the devices
    /// received again.
    fn recovery_markdown(&self) -> String {
        let r = &self.recovery;
        let t = &r.time_to_receive_again;
        let secs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} s"));
        format!(
            "| recovery | |\n|---|---|\n\
             | devices disconnected / disconnects / reconnects | {dd} / {d} / {rc} |\n\
             | time to receive again (disconnect -> first delivery): p50 / p99 / max | {p50:.2} s / {p99:.2} s / {max:.2} s ({n} samples) |\n\
             | devices still waiting to receive again at the end | {never} |\n\
             | first disconnect / last device receiving again | {first} / {last} |\n\
             | longest time without any delivery during the schedule | {gap:.2} s (from {from:.1} s) |\n",
            dd = r.devices_disconnected,
            d = r.disconnects,
            rc = r.reconnects,
            p50 = t.p50_ms / 1000.0,
            p99 = t.p99_ms / 1000.0,
            max = t.max_ms / 1000.0,
            n = t.count,
            never = r.never_received_again,
            first = secs(r.first_disconnect_at_secs),
            last = secs(r.last_received_again_at_secs),
            gap = r.longest_delivery_gap_secs,
            from = r.longest_delivery_gap_from_secs,
        )
    }

    /// The verdict line: delivery first (PASS or FAIL), then whether the
    /// latencies can be trusted (datagrams dropped on either side).
    pub fn verdict(&self) -> String {
        let files_ok = self
            .attachments
            .as_ref()
            .is_none_or(|a| a.upload_failed == 0 && a.download_failed == 0);
        if let Some(s) = &self.slice {
            return format!(
                "slice {}/{} of run {:08x}: merge the slices' reports (`herold-loadtest --merge`) \
                 for the verdict",
                s.slice.index, s.slice.count, s.run_id
            );
        }
        let delivery = if self.verification.is_clean() && files_ok {
            "PASS"
        } else {
            "FAIL"
        };
        let u = &self.udp;
        if !u.dropped_any() {
            return delivery.to_owned();
        }
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        format!(
            "{delivery}, but UDP datagrams were dropped (relays {}, load tester {}, host {}): \
             the latencies include QUIC loss recovery",
            n(u.relay.map(|r| r.drops)),
            n(u.loadtest_drops),
            n(u.host_rcvbuf_errors),
        )
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let v = &self.verification;
        let lat = |l: &Latency| {
            format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            )
        };
        let mut errors: Vec<_> = self.errors.iter().collect();
        errors.sort();
        let errors = if errors.is_empty() {
            "none".to_owned()
        } else {
            errors
                .iter()
                .map(|(e, n)| format!("{n} x {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        format!(
            "# Load test: {name}\n\n\
             **Verdict: {verdict}**{counts}\n\n\
             | population | |\n|---|---|\n\
             | scale / rate scale | {scale} / {rs} |\n\
             | accounts / devices / conversations | {acc} / {dev} / {conv} |\n\
             | provisioning / connecting | {prov:.1} s / {conn:.1} s |\n\n\
             | traffic | |\n|---|---|\n\
             | schedule / with settling | {sched:.1} s / {el:.1} s |\n\
             | submits sent / accepted / failed (retries after UNAVAILABLE) | {sent} / {accd} / {failed} ({retried}) |\n\
             | accepted per second | {aps:.1} |\n\
             | deliveries expected / seen | {exp} / {del} |\n\
             | deliveries per second (mean / peak second) | {dps:.1} / {peak} |\n\
             | failures | {errors} |\n\n\
             | latency (ms, from intended send time) | samples | p50 | p90 | p99 | p99.9 | max |\n\
             |---|---|---|---|---|---|---|\n\
             | submit -> accepted {acc_lat}\n\
             | submit -> delivered {del_lat}\n\n\
             {recovery}\n\
             {attachments}\
             {udp}\n\
             Plots: `{name}-throughput.svg`, `{name}-latency.svg`.\n",
            name = self.scenario,
            verdict = self.verdict(),
            // A slice verifies nothing by itself: the merge does.
            counts = if self.slice.is_some() {
                String::new()
            } else {
                format!(
                    " (lost {}, duplicated {}, reordered {}, misdelivered {})",
                    v.lost, v.duplicated, v.reordered, v.misdelivered
                )
            },
            scale = self.scale,
            rs = self.rate_scale,
            acc = self.accounts,
            dev = self.devices,
            conv = self.conversations,
            prov = self.provision_secs,
            conn = self.connect_secs,
            sched = self.schedule_secs,
            el = self.elapsed_secs,
            sent = self.sent,
            accd = self.accepted,
            failed = self.failed,
            retried = self.retried,
            aps = self.accepted_per_sec,
            exp = v.expected,
            del = v.delivered,
            dps = self.delivered_per_sec,
            peak = self.peak_delivered_per_sec,
            acc_lat = lat(&self.submit_to_accepted),
            del_lat = lat(&self.submit_to_delivered),
            recovery = self.recovery_markdown(),
            attachments = self.attachments.as_ref().map_or(String::new(), |a| format!(
                "| attachments | done | failed | bytes | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n\
                 | uploads | {} | {} | {} | {:.1} | {:.1} |\n\
                 | downloads | {} | {} | {} | {:.1} | {:.1} |\n\n",
                a.uploaded, a.upload_failed, a.bytes_up, a.upload.p50_ms, a.upload.p99_ms,
                a.downloaded, a.download_failed, a.bytes_down, a.download.p50_ms, a.download.p99_ms,
            )),
            udp = self.udp_markdown(),
        )
    }

    fn plot_throughput(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let x_max = self.timeline.len().max(1) as u64;
        let y_max = self
            .timeline
            .iter()
            .map(|s| s.delivered.max(s.accepted))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: throughput per second", self.scenario),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..x_max, 0u64..(y_max + y_max / 10 + 1))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("per second")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                self.timeline.iter().map(|s| (s.second, s.delivered)),
                &BLUE,
            ))
            .map_err(plot_err)?
            .label("deliveries")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                self.timeline.iter().map(|s| (s.second, s.accepted)),
                &RED,
            ))
            .map_err(plot_err)?
            .label("accepted submits")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }

    fn plot_latency(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let x_max = self.timeline.len().max(1) as u64;
        let y_max = self
            .timeline
            .iter()
            .map(|s| s.p99_ms)
            .fold(1.0f64, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: submit -> delivered latency", self.scenario),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..x_max, 0f64..(y_max * 1.1))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("milliseconds")
            .draw()
            .map_err(plot_err)?;
        let busy = || self.timeline.iter().filter(|s| s.delivered > 0);
        chart
            .draw_series(LineSeries::new(busy().map(|s| (s.second, s.p99_ms)), &RED))
            .map_err(plot_err)?
            .label("p99")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .draw_series(LineSeries::new(busy().map(|s| (s.second, s.p50_ms)), &BLUE))
            .map_err(plot_err)?
            .label("p50")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}
