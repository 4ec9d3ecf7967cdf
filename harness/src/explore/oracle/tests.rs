use flakyhba_backend::faults::Plan;
use guest_miniport::contract::{GuestArgs, Workload};
use serde_json::json;

use super::*;
use crate::scenario::expect::Metrics;

fn args() -> GuestArgs {
    GuestArgs {
        workload: Workload::Io,
        blocks: 32,
        queue_depth: 4,
        srb_timeout_ms: 300,
        tmf_timeout_ms: 200,
        hold_ms: 400,
        retries: 2,
        deadline_ms: 3000,
        ..GuestArgs::default()
    }
}

fn allow_with(plan: &str, a: &GuestArgs) -> Allowance {
    let plan = Plan::from_toml_str(plan).unwrap_or_else(|e| panic!("{e}\n{plan}"));
    Allowance::derive(&plan, a)
}

fn allow(plan: &str) -> Allowance {
    allow_with(plan, &args())
}

const MEDIUM_ON_WRITES: &str = "[[fault]]\nkind = \"status\"\ndirection = \"write\"\n\
                                status = \"check-condition\"\nsense_key = 3\nasc = 0x11\n";

#[test]
fn an_injected_error_is_a_final_status_of_the_commands_it_can_hit() {
    let a = allow(MEDIUM_ON_WRITES);
    assert_eq!(
        a.finals,
        [FinalStatus {
            op: Op::Write,
            srb_status: "error",
            scsi_status: Some(2),
            sense_key: Some(3),
        }]
    );
    assert_eq!(a.must_fail, [1], "a failed write must fail the run");
    // The same error on reads is counted by the class driver, not fatal.
    let reads = allow(&MEDIUM_ON_WRITES.replace("direction = \"write\"", "opcode = \"read-10\""));
    assert!(reads.finals.is_empty(), "{:?}", reads.finals);
    assert!(reads.must_fail.is_empty());
    // On any command: fatal for a write or INQUIRY, not for a read.
    let any = allow(&MEDIUM_ON_WRITES.replace("direction = \"write\"\n", ""));
    assert_eq!(any.finals.len(), 4, "{:?}", any.finals);
    assert!(!any.finals.iter().any(|f| f.op == Op::Read));
    assert!(any.must_fail.is_empty(), "a read hit by it passes");
}

#[test]
fn retried_statuses_are_never_final() {
    for status in ["busy", "task-set-full", "virtio-busy", "reset"] {
        let a = allow(&format!(
            "[[fault]]\nkind = \"status\"\nstatus = \"{status}\"\nonce = true\n"
        ));
        assert!(a.finals.is_empty(), "{status}: {:?}", a.finals);
        assert!(a.must_fail.is_empty(), "{status}");
    }
    let ua = "[[fault]]\nkind = \"status\"\nstatus = \"check-condition\"\nsense_key = 6\n";
    assert!(allow(ua).finals.is_empty());
    assert!(
        allow(ua).unit_attention_final,
        "unbounded: the retries can run out"
    );
    assert!(!allow(&format!("{ua}times = 3\n")).unit_attention_final);
}

#[test]
fn virtio_responses_map_to_the_status_a_correct_miniport_gives() {
    for (status, srb) in [
        ("transport-failure", "hba_error"),
        ("failure", "hba_error"),
        ("bad-target", "selection_timeout"),
        ("aborted", "aborted"),
        ("overrun", "data_overrun"),
    ] {
        let a = allow(&format!(
            "[[fault]]\nkind = \"status\"\nopcode = \"read-10\"\nstatus = \"{status}\"\n"
        ));
        assert_eq!(a.finals.len(), 1, "{status}");
        assert_eq!(a.finals[0].srb_status, srb, "{status}");
        assert_eq!(a.finals[0].op, Op::Read);
        assert_eq!(a.must_fail, [1], "{status}");
    }
}

#[test]
fn bus_resets_run_out_only_past_the_port_s_retries() {
    let lose =
        |trigger: &str| format!("[[fault]]\nkind = \"lose\"\nopcode = \"write-10\"\n{trigger}");
    assert!(!allow(&lose("once = true\n")).bus_reset_final);
    assert!(!allow(&lose("times = 2\n")).bus_reset_final, "retries = 2");
    assert!(allow(&lose("times = 3\n")).bus_reset_final);
    assert!(
        allow(&lose("probability = 0.1\n")).bus_reset_final,
        "unbounded"
    );
    let rul = GuestArgs {
        workload: Workload::ResetUnderLoad,
        ..args()
    };
    assert!(
        allow_with(&lose("times = 2\n"), &rul).bus_reset_final,
        "the runner's own reset too"
    );
    // A lose that can only hit TMFs' queue hits no command.
    assert!(!allow(&lose("queue = \"control\"\n")).bus_reset_final);
    // Each TRANSPORT_RESET makes the miniport reset the LU.
    let event = "[[fault]]\nkind = \"event\"\nevent = \"transport-reset\"\n";
    assert!(allow(&format!("{event}interval_ms = 50\n")).bus_reset_final);
    assert!(!allow(&format!("{event}at_ms = 50\n")).bus_reset_final);
    // A delay past the SRB timeout is a lost command to the port.
    let slow = "[[fault]]\nkind = \"delay\"\ndelay_ms = 500\n";
    assert!(allow(slow).bus_reset_final);
    assert!(!allow(&slow.replace("500", "50")).bus_reset_final);
}

#[test]
fn a_fault_that_can_reset_or_abort_commands_lifts_must_fail() {
    let plan = format!("{MEDIUM_ON_WRITES}\n[[fault]]\nkind = \"hang-tmf\"\n");
    assert!(allow(&plan).must_fail.is_empty());
    let rul = GuestArgs {
        workload: Workload::ResetUnderLoad,
        ..args()
    };
    assert!(allow_with(MEDIUM_ON_WRITES, &rul).must_fail.is_empty());
}

#[test]
fn short_transfers_must_fail_only_where_the_length_is_checked() {
    let st = |m: &str| {
        format!("[[fault]]\nkind = \"status\"\nstatus = \"short-transfer\"\nresidual = 8\n{m}")
    };
    let reads = allow(&st("opcode = \"read-10\"\n"));
    assert_eq!(reads.short_transfers, [Op::Read]);
    assert_eq!(reads.must_fail, [1]);
    // direction = read also takes INQUIRY and READ CAPACITY, whose length nobody checks.
    let data_in = allow(&st("direction = \"read\"\n"));
    assert!(data_in.short_transfers.contains(&Op::Inquiry));
    assert!(data_in.must_fail.is_empty());
    assert_eq!(allow(&st("lba = [0, 9]\n")).must_fail, [1]);
}

#[test]
fn the_time_budget_decides_whether_a_timeout_is_the_plan_s_doing() {
    let quiet = allow("");
    assert!(quiet.budget_ms < 1000, "{}", quiet.budget_ms);
    assert!(!quiet.timeouts);
    // BUSY on every command: a 20 ms pause each, more than the deadline holds.
    let busy = allow("[[fault]]\nkind = \"status\"\nstatus = \"busy\"\n");
    assert!(busy.timeouts, "{}", busy.budget_ms);
    // Even on one command only: each retry is hit again.
    let inquiry =
        allow("[[fault]]\nkind = \"status\"\nopcode = \"inquiry\"\nstatus = \"task-set-full\"\n");
    assert!(inquiry.timeouts, "{}", inquiry.budget_ms);
    let sometimes = allow("[[fault]]\nkind = \"status\"\nopcode = \"inquiry\"\nstatus = \"task-set-full\"\nprobability = 0.5\n");
    assert!(!sometimes.timeouts, "{}", sometimes.budget_ms);
    assert!(!allow("[[fault]]\nkind = \"status\"\nstatus = \"busy\"\ntimes = 3\n").timeouts);
    // A lost command costs its timeout, the TMF bound and the hold.
    let lose = allow("[[fault]]\nkind = \"lose\"\nonce = true\n");
    assert!(lose.budget_ms >= quiet.budget_ms + 300 + 200 + 400);
    assert!(!lose.timeouts);
    // Transport resets every 50 ms, each holding requests for 400 ms.
    let events =
        allow("[[fault]]\nkind = \"event\"\nevent = \"transport-reset\"\ninterval_ms = 50\n");
    assert!(events.timeouts);
}

#[test]
fn matching_follows_the_plan_s_matcher() {
    let m = |keys: &str| {
        Plan::from_toml_str(&format!("[[fault]]\nkind = \"lose\"\n{keys}"))
            .unwrap()
            .faults[0]
            .matcher
    };
    assert!(could_match(&m(""), Op::Inquiry));
    assert!(could_match(&m("opcode = \"inquiry\"\n"), Op::Inquiry));
    assert!(!could_match(&m("opcode = \"inquiry\"\n"), Op::Read));
    assert!(!could_match(&m("lba = [0, 5]\n"), Op::Inquiry));
    assert!(could_match(&m("lba = [0, 5]\n"), Op::Write));
    assert!(!could_match(&m("queue = \"control\"\n"), Op::Write));
    assert!(!could_match(&m("target = 1\n"), Op::Write));
    assert!(could_match(&m("direction = \"read\"\n"), Op::ReportLuns));
    assert!(!could_match(&m("direction = \"none\"\n"), Op::Read));
}

/// Metrics of a clean run.
fn clean() -> Metrics {
    let mut m = Metrics::new();
    for (k, v) in [
        ("run.qemu_exit", json!(33)),
        ("run.timed_out", json!(false)),
        ("guest.result", json!("pass")),
        ("guest.violations", json!(0)),
        ("guest.stall_max_us", json!(12)),
        ("image.mismatches", json!(0)),
        ("image.verified", json!(32)),
        ("image.expected", json!(32)),
    ] {
        m.insert(k.into(), v);
    }
    m
}

fn failed_with(m: &mut Metrics, failure: &str, op: &str) {
    m.insert("run.qemu_exit".into(), json!(35));
    m.insert("guest.result".into(), json!("fail"));
    m.insert("guest.reason".into(), json!(format!("{op} failed")));
    m.insert("guest.failure".into(), json!(failure));
    m.insert("guest.failed_op".into(), json!(op));
}

fn verdict(allow: &Allowance, m: &Metrics) -> Verdict {
    judge(
        allow,
        &Observed {
            metrics: m,
            error: None,
            backend_failed: None,
        },
    )
}

#[test]
fn a_clean_run_passes_and_each_clause_is_caught() {
    let a = allow("");
    assert_eq!(verdict(&a, &clean()), Verdict::Pass);
    let mut m = clean();
    m.insert("guest.violations".into(), json!(2));
    m.insert(
        "guest.violation_list".into(),
        json!([{"rule": "P2", "routine": "port", "message": "still outstanding"}]),
    );
    let v = verdict(&a, &m);
    assert_eq!(v.clause(), Some(Clause::Rule));
    assert!(
        v.finding().unwrap().detail.contains("first P2 in port"),
        "{v:?}"
    );
    let mut m = clean();
    m.insert("guest.stall_max_us".into(), json!(1500));
    assert_eq!(verdict(&a, &m).clause(), Some(Clause::Stall));
    let mut m = clean();
    m.insert("image.mismatches".into(), json!(1));
    assert_eq!(verdict(&a, &m).clause(), Some(Clause::Data));
    let mut m = clean();
    m.insert("image.verified".into(), json!(31));
    assert_eq!(verdict(&a, &m).clause(), Some(Clause::Data), "a lost write");
    let mut m = clean();
    m.insert("run.timed_out".into(), json!(true));
    assert_eq!(verdict(&a, &m).clause(), Some(Clause::Hang));
    let v = judge(
        &a,
        &Observed {
            metrics: &clean(),
            error: None,
            backend_failed: Some("the backend panicked".into()),
        },
    );
    assert_eq!(v.clause(), Some(Clause::Backend));
}

#[test]
fn a_failure_the_plan_causes_is_tolerated_and_one_it_cannot_is_found() {
    let a = allow(MEDIUM_ON_WRITES);
    let mut m = clean();
    failed_with(&mut m, "command", "WRITE");
    m.insert("guest.failed_srb_status".into(), json!("error"));
    m.insert("guest.failed_scsi_status".into(), json!(2));
    m.insert("guest.failed_sense_key".into(), json!(3));
    assert!(matches!(verdict(&a, &m), Verdict::Tolerated(_)));
    // The same status on a read: the plan cannot make a read fail so.
    m.insert("guest.failed_op".into(), json!("READ"));
    assert_eq!(verdict(&a, &m).clause(), Some(Clause::Failure));
    // An adapter error where the plan injects only a medium error.
    m.insert("guest.failed_op".into(), json!("WRITE"));
    m.insert("guest.failed_srb_status".into(), json!("hba_error"));
    assert_eq!(verdict(&a, &m).clause(), Some(Clause::Failure));
    // Tolerated failures still owe clean data and no violations.
    m.insert("guest.failed_srb_status".into(), json!("error"));
    m.insert("image.mismatches".into(), json!(3));
    assert_eq!(verdict(&a, &m).clause(), Some(Clause::Data));
}

#[test]
fn a_hidden_error_is_found() {
    let a = allow(MEDIUM_ON_WRITES);
    let mut m = clean();
    assert_eq!(verdict(&a, &m), Verdict::Pass, "the fault never fired");
    m.insert("trace.fault.1".into(), json!(2));
    let v = verdict(&a, &m);
    assert_eq!(v.clause(), Some(Clause::Hidden), "{v:?}");
}

#[test]
fn a_timeout_is_a_hang_unless_the_plan_outlasts_the_deadline() {
    let mut m = clean();
    failed_with(&mut m, "timeout", "WRITE");
    assert_eq!(verdict(&allow(""), &m).clause(), Some(Clause::Hang));
    let busy = allow("[[fault]]\nkind = \"status\"\nstatus = \"busy\"\n");
    assert!(matches!(verdict(&busy, &m), Verdict::Tolerated(_)));
    // Retries that ran out.
    let mut m = clean();
    failed_with(&mut m, "command", "WRITE");
    m.insert("guest.failed_srb_status".into(), json!("bus_reset"));
    let lose = allow("[[fault]]\nkind = \"lose\"\n");
    assert!(matches!(verdict(&lose, &m), Verdict::Tolerated(_)));
    let once = allow("[[fault]]\nkind = \"lose\"\nonce = true\n");
    assert_eq!(verdict(&once, &m).clause(), Some(Clause::Failure));
}

#[test]
fn wrong_data_is_tolerated_only_when_the_plan_corrupts() {
    let mut m = clean();
    failed_with(&mut m, "mismatch", "READ");
    assert_eq!(verdict(&allow(""), &m).clause(), Some(Clause::Data));
    let corrupt = allow("allow_corruption = true\n[[fault]]\nkind = \"corrupt\"\n");
    assert!(matches!(verdict(&corrupt, &m), Verdict::Tolerated(_)));
}

#[test]
fn only_violations_judged_by_measured_time_may_be_host_noise() {
    let mut m = clean();
    m.insert("guest.violations".into(), json!(2));
    m.insert(
        "guest.violation_list".into(),
        json!([{"rule": "I2"}, {"rule": "P4"}]),
    );
    assert!(timed_violations_only(&m));
    m.insert(
        "guest.violation_list".into(),
        json!([{"rule": "I2"}, {"rule": "N5"}]),
    );
    assert!(!timed_violations_only(&m));
    // More violations than the list holds: the rest could be anything.
    m.insert("guest.violations".into(), json!(3));
    m.insert(
        "guest.violation_list".into(),
        json!([{"rule": "I2"}, {"rule": "I2"}]),
    );
    assert!(!timed_violations_only(&m));
    assert!(!timed_violations_only(&clean()));
}
