//! What a two-process migration did, printed for people or as JSON.
//!
//! # The `--json` document
//!
//! With `--json`, stdout holds exactly one JSON object, on success and on failure:
//!
//! - `schema_version` ([`JSON_SCHEMA_VERSION`]): raised whenever a field is removed or changes
//!   meaning (new fields may appear without it);
//! - `ok`: whether the command succeeded (its exit status is 0);
//! - `error`: `null`, or `{ "kind", "message" }` with `kind` one of `usage` (the command line;
//!   exit status 2), `verification` (the migrated run differs from the never-migrated one) or
//!   `migration` (anything else: a connection, the peer, a rejected stream);
//! - the report's fields (absent when the failure came before there was a report).

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use sim::scenario::Scenario;

use super::{Args, mib};

/// Version of the `--json` document's shape.
pub(crate) const JSON_SCHEMA_VERSION: u32 = 1;

/// Whether this process has printed its JSON object.
static JSON_EMITTED: AtomicBool = AtomicBool::new(false);

/// What went wrong, in the `--json` document.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct JsonError {
    /// `usage`, `verification` or `migration`.
    kind: &'static str,
    /// For a person.
    message: String,
}

impl JsonError {
    /// An error of `kind` (see the module docs) saying `message`.
    pub(crate) fn new(kind: &'static str, message: &str) -> Self {
        Self {
            kind,
            message: message.to_owned(),
        }
    }
}

/// The `--json` document around a report.
#[derive(Serialize)]
struct Document<'a, T: Serialize> {
    schema_version: u32,
    ok: bool,
    error: Option<JsonError>,
    #[serde(flatten)]
    report: Option<&'a T>,
}

/// Print the one `--json` object: `report` (if there is one) and `error` (`ok` is its absence).
pub(crate) fn emit_json<T: Serialize>(report: Option<&T>, error: Option<JsonError>) {
    println!("{}", json_document(report, error));
    JSON_EMITTED.store(true, Ordering::Relaxed);
}

/// The `--json` object as text.
fn json_document<T: Serialize>(report: Option<&T>, error: Option<JsonError>) -> String {
    let doc = Document {
        schema_version: JSON_SCHEMA_VERSION,
        ok: error.is_none(),
        error,
        report,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| {
        // Only a report serde cannot write (none of ours): still one object, saying so.
        let failed = Document::<()> {
            schema_version: JSON_SCHEMA_VERSION,
            ok: false,
            error: Some(JsonError::new(
                "migration",
                &format!("writing the report: {e}"),
            )),
            report: None,
        };
        serde_json::to_string_pretty(&failed).unwrap_or_default()
    })
}

/// Whether [`emit_json`] has run.
pub(crate) fn json_emitted() -> bool {
    JSON_EMITTED.load(Ordering::Relaxed)
}

/// Graphics memory of a scenario's vGPU, bytes.
pub(super) fn gm_bytes(sc: &Scenario) -> u64 {
    sc.config.partition.aperture.size() + sc.config.partition.hidden.size()
}

/// Bytes in MiB, exact (2.5 for 2.5 MiB; JSON numbers and labels, not rounded).
pub(super) fn exact_mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// One round as the source saw it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Round {
    /// Round number (the last one is the stop-and-copy's).
    pub(super) round: u32,
    /// Pages sent.
    pub(super) pages: u64,
    /// Zero pages among them.
    pub(super) zero_pages: u64,
    /// Stream bytes.
    pub(super) bytes: u64,
    /// Pages dirty when the round ended.
    pub(super) dirty_left: u64,
    /// Wall time since the migration started when the round's last byte was produced, ms.
    pub(super) end_ms: f64,
}

/// Where the stop phase's time went (model guest): from the source's stop to the destination's
/// `RESUMED` received. The source's figures are wall times from its stop; the destination's
/// come in its verdict ([`super::wire::StopVerdict`]). Read together: the stop round's bytes need
/// `bytes / link` on the link; a source whose `encode_ms` approaches that, or a destination whose
/// `apply_us` does (the senders then report `socket_wait_ms`), is the bound instead of the link.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct StopPhase {
    /// Pages the stop round sent.
    pub(super) pages: u64,
    /// Stream bytes after the stop (pages, device state, END).
    pub(super) bytes: u64,
    /// Those bytes at the link rate, ms (0 when unlimited): the floor of this stop round.
    pub(super) link_floor_ms: f64,
    /// Quiescing the guest (its in-flight GPU work drains), ms.
    pub(super) quiesce_ms: f64,
    /// `SourceSession::stop_and_copy` (the last dirty harvest), ms.
    pub(super) harvest_ms: f64,
    /// Producing the stop phase's output (reading, classifying and encoding pages, the device
    /// state, END), summed over channels, ms.
    pub(super) encode_ms: f64,
    /// Time the senders were held by the rate limit after the stop, summed over connections, ms.
    pub(super) link_wait_ms: f64,
    /// Time the senders were held by a full socket after the stop (the destination reading more
    /// slowly than the link carries), summed over connections, ms.
    pub(super) socket_wait_ms: f64,
    /// Time in the socket's write calls after the stop (the kernel's copy; on loopback also its
    /// delivery to the receiver), summed over connections, ms.
    pub(super) write_ms: f64,
    /// From the stop to the last byte (the vCPU state) on the socket, ms.
    pub(super) sent_ms: f64,
    /// Until then: the source's migration and sender threads' time on a CPU, summed, ms (Linux
    /// `schedstat`; 0 elsewhere).
    pub(super) cpu_ms: f64,
    /// And their time runnable but waiting for a CPU (the machine's other work), summed, ms.
    pub(super) cpu_wait_ms: f64,
    /// From the stop to the destination's acknowledgement of the whole stream read by the
    /// source, ms.
    pub(super) applied_ms: f64,
    /// The destination's share (absent if it sent none).
    pub(super) dest: Option<super::wire::StopVerdict>,
}

/// Figures only a KVM VM has (`--guest kvm`).
#[derive(Debug, Clone, Serialize)]
pub(super) struct KvmFigures {
    /// Guest RAM, MiB.
    pub(super) ram_mib: u64,
    /// Bytes of the vGPU's device-state stream (the library's sessions, VMM-RAM mode).
    pub(super) vgpu_state_bytes: u64,
    /// Bytes of the vCPU state.
    pub(super) cpu_state_bytes: u64,
    /// Source: from the vCPU's pause to END sent, ms.
    pub(super) source_stop_copy_ms: f64,
    /// Destination: from END received to the vCPU started, ms.
    pub(super) dest_resume_ms: f64,
    /// Destination: from the source's last guest exit to END received, ms.
    pub(super) end_after_pause_ms: f64,
    /// MMIO exits the guest made while pages streamed (pre-copy).
    pub(super) mmio_exits_during_precopy: u64,
    /// Their mean wait for the device lock, µs.
    pub(super) mmio_wait_mean_us: f64,
    /// 99th percentile wait (bucket upper bound), µs.
    pub(super) mmio_wait_p99_us: u64,
    /// Longest wait, µs.
    pub(super) mmio_wait_max_us: f64,
    /// Longest the migration thread held the device lock during pre-copy, µs.
    pub(super) lock_hold_max_us: u64,
    /// Longest a GPU step (the reference executor) held the device lock during pre-copy, µs.
    pub(super) gpu_step_hold_max_us: f64,
    /// 99th percentile of the GPU steps' lock hold (bucket upper bound), µs.
    pub(super) gpu_step_hold_p99_us: u64,
    /// Longest pre-copy round, ms (an MMIO exit blocked for a whole round would wait this long).
    pub(super) longest_round_ms: f64,
    /// Bytes sent on each connection: the main one (control, device and vCPU state, its stripes
    /// of guest RAM), then each extra page connection.
    pub(super) channel_bytes: Vec<u64>,
}

/// Everything the report shows.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Outcome {
    /// The guest: `model` (the reference platform's driver model) or `kvm` (a KVM VM).
    pub(super) guest: String,
    /// KVM-only figures.
    pub(super) kvm: Option<KvmFigures>,
    pub(super) workload: String,
    /// Graphics memory of the vGPU, bytes.
    pub(super) gm_bytes: u64,
    /// The same in MiB, exact (2.5 for the `--quick` vGPU).
    pub(super) gm_mib: f64,
    /// Sender rate limit, bytes/s (`None`: unlimited).
    pub(super) link_bytes_per_s: Option<u64>,
    pub(super) frames: u64,
    pub(super) seed: u64,
    pub(super) start_frame: u64,
    /// Fault injection: the stream offset whose bit was flipped.
    pub(super) fault_flip_byte: Option<u64>,
    pub(super) rounds: Vec<Round>,
    /// Why the policy switched to stop-and-copy, in words (`none` if it never did).
    pub(super) switch_reason: String,
    pub(super) predicted_downtime_us: Option<u64>,
    /// Frames the guest had submitted when the source stopped.
    pub(super) stopped_at_frame: u64,
    /// How far the guest's modeled clock was behind the wall clock at the stop, ms.
    pub(super) guest_lag_ms: f64,
    /// Wall time of pre-copy (migration start to the policy's switch), ms.
    pub(super) precopy_ms: f64,
    /// Wall time between the policy's switch and the stop, waiting for the destination to apply
    /// what it had been sent (the guest runs meanwhile), ms.
    pub(super) catch_up_ms: f64,
    /// Most stream bytes in flight (sent, not yet applied by the destination) during pre-copy;
    /// 0 when not bounded (the KVM guest, the modeled run).
    pub(super) window_bytes: u64,
    /// Modeled time the quiesce took to drain in-flight work, µs.
    pub(super) drain_modeled_us: u64,
    /// Where the stop phase's time went (model guest, two processes).
    pub(super) stop_phase: Option<StopPhase>,
    /// Migration stream bytes.
    pub(super) stream_bytes: u64,
    /// Stream offset at the stop.
    pub(super) stop_stream_offset: u64,
    /// Bytes on the socket (stream plus the demo's framing, hello excluded).
    pub(super) socket_bytes: u64,
    pub(super) full_pages: u64,
    pub(super) zero_pages: u64,
    pub(super) dup_pages: u64,
    pub(super) delta_pages: u64,
    pub(super) delta_bytes: u64,
    pub(super) unchanged_pages_skipped: u64,
    /// Bytes saved by zero markers, duplicates, deltas and unchanged-page detection.
    pub(super) saved_bytes: u64,
    /// Measured wall downtime: source stop → the destination's RESUMED received, ms.
    pub(super) downtime_ms: f64,
    /// Wall time from the migration's start to RESUMED received, ms.
    pub(super) total_ms: f64,
    pub(super) verified: bool,
    pub(super) verdict: String,
    /// Frames the destination rendered after resuming.
    pub(super) dest_frames: u64,
    /// Destination wall time to finish the workload and verify, ms.
    pub(super) dest_verify_ms: u64,
    /// Wall time of the whole command, ms.
    pub(super) wall_ms: f64,
}

impl Outcome {
    pub(super) fn new(sc: &Scenario, link: Option<u64>, _args: &Args) -> Self {
        Self::blank(sc.profile.name, gm_bytes(sc), link, sc.frames, sc.seed)
    }

    /// An outcome with nothing measured yet (model guest).
    pub(super) fn blank(
        workload: &str,
        gm_bytes: u64,
        link: Option<u64>,
        frames: u64,
        seed: u64,
    ) -> Self {
        Self {
            guest: "model".into(),
            kvm: None,
            workload: workload.to_string(),
            gm_bytes,
            gm_mib: exact_mib(gm_bytes),
            link_bytes_per_s: link,
            frames,
            seed,
            start_frame: 0,
            fault_flip_byte: None,
            rounds: Vec::new(),
            switch_reason: "none".into(),
            predicted_downtime_us: None,
            stopped_at_frame: 0,
            guest_lag_ms: 0.0,
            precopy_ms: 0.0,
            catch_up_ms: 0.0,
            window_bytes: 0,
            drain_modeled_us: 0,
            stop_phase: None,
            stream_bytes: 0,
            stop_stream_offset: 0,
            socket_bytes: 0,
            full_pages: 0,
            zero_pages: 0,
            dup_pages: 0,
            delta_pages: 0,
            delta_bytes: 0,
            unchanged_pages_skipped: 0,
            saved_bytes: 0,
            downtime_ms: 0.0,
            total_ms: 0.0,
            verified: false,
            verdict: String::new(),
            dest_frames: 0,
            dest_verify_ms: 0,
            wall_ms: 0.0,
        }
    }

    /// Fill the page counts from the rounds and the session's content statistics.
    pub(super) fn set_content(&mut self, c: vgpu::content::ContentStats) {
        let pages: u64 = self.rounds.iter().map(|x| x.pages).sum();
        self.zero_pages = self.rounds.iter().map(|x| x.zero_pages).sum();
        self.dup_pages = c.dup;
        self.delta_pages = c.delta;
        self.delta_bytes = c.delta_bytes;
        self.unchanged_pages_skipped = c.unchanged;
        self.full_pages = pages.saturating_sub(self.zero_pages + c.dup + c.delta);
        self.saved_bytes = (self.zero_pages + c.dup + c.unchanged) * 4096
            + (c.delta * 4096).saturating_sub(c.delta_bytes);
    }
}

/// End a finished two-process run: the whole run's wall time, the timeline plot, the report,
/// and the verdict as the result (an error when verification failed).
pub(super) fn conclude(o: &mut Outcome, args: &Args, started: std::time::Instant) -> crate::Result {
    o.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let plot = super::plot::write(&args.plot, o);
    let result = if o.verified {
        Ok(())
    } else {
        Err(format!("verification FAILED: {}", o.verdict))
    };
    let error = result
        .as_ref()
        .err()
        .map(|_| JsonError::new("verification", &o.verdict));
    print(o, args.json, &plot, error);
    result
}

/// Print the report (with `--json`, the one JSON object, saying `error` if the command fails).
pub(super) fn print(
    o: &Outcome,
    json: bool,
    plot: &Result<String, String>,
    error: Option<JsonError>,
) {
    if json {
        emit_json(Some(o), error);
        return;
    }
    println!();
    println!("round      pages   zero pages        bytes   dirty after   at (ms)");
    let last = o.rounds.len().saturating_sub(1);
    for (i, x) in o.rounds.iter().enumerate() {
        let label = if i == last {
            "stop".to_string()
        } else {
            x.round.to_string()
        };
        println!(
            "{label:>5} {:>10} {:>12} {:>12} {:>13} {:>9.0}",
            x.pages, x.zero_pages, x.bytes, x.dirty_left, x.end_ms
        );
    }
    println!();
    if o.kvm.is_some() {
        println!(
            "switched to stop-and-copy: {} (predicted downtime {}) after {:.0} ms of pre-copy; the guest \
             had completed {} frames when its vCPU was paused",
            o.switch_reason,
            o.predicted_downtime_us
                .map_or("-".to_string(), |u| format!("{:.1} ms", u as f64 / 1000.0)),
            o.precopy_ms,
            o.stopped_at_frame
        );
    } else {
        println!(
            "switched to stop-and-copy: {} (predicted downtime {}) after {:.0} ms of pre-copy; stopped \
             {:.0} ms later, waiting for the destination to apply what it was sent (at most {} in flight during \
             pre-copy; the wait at most 2 s), at frame {} (the guest's modeled clock {:.0} ms behind the wall clock then)",
            o.switch_reason,
            o.predicted_downtime_us
                .map_or("-".to_string(), |u| format!("{:.1} ms", u as f64 / 1000.0)),
            o.precopy_ms,
            o.catch_up_ms,
            mib(o.window_bytes),
            o.stopped_at_frame,
            o.guest_lag_ms
        );
    }
    println!(
        "stream: {} bytes ({}), {} of them after the stop; {} bytes on the socket with framing",
        o.stream_bytes,
        mib(o.stream_bytes),
        o.stream_bytes - o.stop_stream_offset.min(o.stream_bytes),
        o.socket_bytes
    );
    println!(
        "pages: {} full, {} zero (markers), {} duplicates (16 B each), {} deltas ({} B in all), {} dirty but unchanged (not sent)",
        o.full_pages,
        o.zero_pages,
        o.dup_pages,
        o.delta_pages,
        o.delta_bytes,
        o.unchanged_pages_skipped
    );
    println!(
        "saved by zero markers, duplicates, deltas and unchanged-page detection: {}",
        mib(o.saved_bytes)
    );
    if let Some(k) = &o.kvm {
        println!(
            "downtime (guest-visible, measured): {:.1} ms from the source's last guest instruction to the \
             destination's first (END reached the destination {:.1} ms after the pause; commit, vCPU state \
             and resume took {:.1} ms)",
            o.downtime_ms, k.end_after_pause_ms, k.dest_resume_ms
        );
    } else {
        println!(
            "downtime (wall, measured): {:.1} ms from the source's stop to the destination's \"resumed\" \
             received (an upper bound: it includes the reply's trip; draining in-flight work took {:.1} ms of modeled time)",
            o.downtime_ms,
            o.drain_modeled_us as f64 / 1000.0
        );
    }
    if let Some(p) = &o.stop_phase {
        print_stop_phase(p);
    }
    println!(
        "total migration time (wall): {:.0} ms; whole run (both processes, verification included): {:.0} ms",
        o.total_ms, o.wall_ms
    );
    if let Some(k) = &o.kvm {
        println!(
            "KVM VM: {} MiB of guest RAM; vGPU device state {} bytes, vCPU state {} bytes; source \
             stop-and-copy (pause to END sent) {:.1} ms",
            k.ram_mib, k.vgpu_state_bytes, k.cpu_state_bytes, k.source_stop_copy_ms
        );
        let per: Vec<String> = k.channel_bytes.iter().map(|b| b.to_string()).collect();
        println!(
            "connections: {} (guest RAM striped by 128 frames, each connection sent and received by its own thread); bytes per connection: {}",
            k.channel_bytes.len(),
            per.join(", ")
        );
        println!(
            "MMIO exits while pages streamed: {}, waited for the device lock {:.1} µs on average, p99 < {} µs, \
             longest {:.1} µs (the longest round took {:.1} ms); the migration thread held the lock at most {} µs, \
             a GPU step at most {:.1} µs (p99 < {} µs)",
            k.mmio_exits_during_precopy,
            k.mmio_wait_mean_us,
            k.mmio_wait_p99_us,
            k.mmio_wait_max_us,
            k.longest_round_ms,
            k.lock_hold_max_us,
            k.gpu_step_hold_max_us,
            k.gpu_step_hold_p99_us
        );
    }
    match plot {
        Ok(p) => println!("timeline plot: {p}"),
        Err(e) => println!("timeline plot: not written ({e})"),
    }
    if o.verified {
        println!(
            "verification: PASSED: the destination rendered the remaining {} frames and its state equals \
             the never-migrated run byte for byte ({})",
            o.dest_frames, o.verdict
        );
    } else {
        println!("verification: FAILED: {}", o.verdict);
    }
}

/// The stop phase's breakdown (see [`StopPhase`]).
fn print_stop_phase(p: &StopPhase) {
    println!(
        "stop phase (source, ms from the stop): quiesce {:.1}, harvest {:.1}; {} pages, {} in {:.1} ms of \
         encoding; held by the link {:.1} and by a full socket {:.1}, {:.1} in write calls (the link alone: {:.1}); all sent at {:.1}, \
         all applied (acknowledged) at {:.1}; its threads {:.1} on a CPU, {:.1} waiting for one",
        p.quiesce_ms,
        p.harvest_ms,
        p.pages,
        mib(p.bytes),
        p.encode_ms,
        p.link_wait_ms,
        p.socket_wait_ms,
        p.write_ms,
        p.link_floor_ms,
        p.sent_ms,
        p.applied_ms,
        p.cpu_ms,
        p.cpu_wait_ms
    );
    if let Some(d) = &p.dest {
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "stop phase (destination): {} messages over {:.1} ms, {:.1} ms waiting to read them, {:.1} ms \
             applying them; vCPU state {:.1} ms after the last; commit {:.1}, start {:.1}; its channel thread \
             {:.1} on a CPU, {:.1} waiting for one",
            d.messages,
            ms(d.span_us),
            ms(d.read_wait_us),
            ms(d.apply_us),
            ms(d.vcpu_after_us),
            ms(d.commit_us),
            ms(d.start_us),
            ms(d.cpu_us),
            ms(d.cpu_wait_us)
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn parse(text: &str) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(text).unwrap() {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn json_document_on_success_and_on_failure() {
        let mut o = Outcome::blank("3d", 5 << 19, None, 60, 1);
        o.verified = true;
        let ok = parse(&json_document(Some(&o), None));
        assert_eq!(ok["schema_version"], JSON_SCHEMA_VERSION);
        assert_eq!(ok["ok"], true);
        assert!(ok["error"].is_null());
        assert_eq!(ok["gm_mib"], 2.5);
        assert_eq!(ok["gm_bytes"], 5u64 << 19);
        assert_eq!(ok["verified"], true);

        let failed = parse(&json_document(
            Some(&o),
            Some(JsonError::new("verification", "GGTT differs")),
        ));
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"]["kind"], "verification");
        assert_eq!(failed["error"]["message"], "GGTT differs");
        assert_eq!(failed["workload"], "3d");

        // No report: just the envelope.
        let bare = parse(&json_document::<Outcome>(
            None,
            Some(JsonError::new("usage", "bad --link")),
        ));
        let keys: Vec<&str> = bare.keys().map(String::as_str).collect();
        assert_eq!(keys, ["error", "ok", "schema_version"]);
    }
}
