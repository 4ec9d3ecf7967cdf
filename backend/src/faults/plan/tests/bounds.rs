//! Every count, rate, size and duration of a plan is bounded, and two-element keys have
//! two elements: each refusal names the key's file:line:col (issue 13 items 7, 8, 9).

use super::*;
use crate::faults::plan::bounds::*;

/// The error for a `[[fault]]` table with `kind` and one more line.
fn refused(kind: &str, line: &str) -> String {
    err_text(&format!("seed = 1\n[[fault]]\nkind = \"{kind}\"\n{line}\n"))
}

#[test]
fn every_count_rate_size_and_duration_has_a_bound() {
    let cases = [
        ("lose", "every = 1000000001".to_owned(), "every"),
        ("lose", "after = 1000000001".into(), "after"),
        ("lose", "times = 18446744073709551615".into(), "times"),
        (
            "delay",
            format!("delay_ms = {}", MAX_DELAY_MS + 1),
            "delay_ms",
        ),
        (
            "delay",
            "delay_ms = 18446744073709551615".into(),
            "delay_ms",
        ),
        ("slow-tmf", "duration_ms = 3600001".into(), "duration_ms"),
        (
            "lose",
            format!("window_ms = [0, {}]", MAX_MOMENT_MS + 1),
            "window_ms",
        ),
        (
            "event",
            "event = \"events-missed\"\nat_ms = 31536000001".into(),
            "at_ms",
        ),
        (
            "spurious-interrupt",
            "interval_ms = 86400001".into(),
            "interval_ms",
        ),
        // The reproduction: four billion signals would hang the worker.
        (
            "spurious-interrupt",
            "at_ms = 500\nburst = 4294967295".into(),
            "burst",
        ),
        (
            "status",
            "status = \"short-transfer\"\nresidual = 4294967295".into(),
            "residual",
        ),
    ];
    for (kind, line, key) in cases {
        let e = refused(kind, &line);
        // The key is on line 4, or on the table's last line when it comes second.
        let at = 4 + line.matches('\n').count();
        assert!(
            e.starts_with(&format!("<plan>:{at}:1: fault #1: key `{key}`: "))
                && e.contains("is above the limit"),
            "{line}: {e}"
        );
    }
    let e = refused(
        "delay",
        "distribution = \"long-tail\"\nmin_ms = 1\nmax_ms = 9\nalpha = 1e-300",
    );
    assert!(e.starts_with("<plan>:7:1: fault #1: key `alpha`: "), "{e}");
    let e = err_text("[[fault]]\nkind = \"corrupt\"\nbytes = 4097\n");
    assert!(
        e.contains("`bytes`: 4097 is above the limit, 4096 bytes")
            || e.contains("allow_corruption"),
        "{e}"
    );
    let e = err_text("allow_corruption = true\n[[fault]]\nkind = \"corrupt\"\nbytes = 4097\n");
    assert_eq!(
        e,
        "<plan>:4:1: fault #1: key `bytes`: 4097 is above the limit, 4096 bytes"
    );

    let long = "n".repeat(MAX_NAME_BYTES + 1);
    let e = refused("delay", &format!("delay_ms = 1\nname = \"{long}\""));
    assert!(
        e.starts_with("<plan>:5:1: fault #1: key `name`: 257 bytes is above the limit"),
        "{e}"
    );

    // The bounds themselves are accepted.
    plan(&format!(
        "[[fault]]\nkind = \"delay\"\ndelay_ms = 1\nname = \"{}\"\n",
        "n".repeat(MAX_NAME_BYTES)
    ));
    plan(&format!(
        "[[fault]]\nkind = \"spurious-interrupt\"\ninterval_ms = {MAX_INTERVAL_MS}\nburst = {MAX_BURST}\n\
         at_ms = {MAX_MOMENT_MS}\nevery = {MAX_COUNT}\nafter = {MAX_COUNT}\ntimes = {MAX_COUNT}\n\
         [[fault]]\nkind = \"delay\"\ndelay_ms = {MAX_DELAY_MS}\nwindow_ms = [0, {MAX_MOMENT_MS}]\n"
    ));
}

#[test]
fn two_element_keys_have_exactly_two_elements() {
    for (line, key_col) in [
        ("lba = [5, 6, 7, 8]", 7),
        ("window_ms = [0, 10, 99]", 13),
        ("lba = [5]", 7),
        ("window_ms = []", 13),
    ] {
        let e = refused("lose", line);
        assert!(
            e.starts_with(&format!("<plan>:4:{key_col}: "))
                && e.contains("expected exactly two elements, [first, last]"),
            "{line}: {e}"
        );
    }
    // The control socket's JSON too.
    let json = serde_json::json!({"kind": "lose", "lba": [5, 6, 7]});
    let e = FaultSpec::from_json(json, false).unwrap_err().to_string();
    assert!(
        e.contains("invalid length 3, expected exactly two elements"),
        "{e}"
    );
    assert_eq!(
        plan("[[fault]]\nkind = \"lose\"\nlba = [5, 8]\n").faults[0]
            .matcher
            .lba,
        Some((5, 8))
    );
}

#[test]
fn shorthand_numbers_keep_64_bits_and_meet_the_same_bounds() {
    let e = FaultSpec::from_shorthand("delay:delay_ms=18446744073709551615", false)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--fault `delay:delay_ms=18446744073709551615`: key `delay_ms`: \
         18446744073709551615 is above the limit, 3600000 ms (an hour)"
    );
    let e = FaultSpec::from_shorthand("delay:delay_ms=99999999999999999999", false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key `delay_ms`") && !e.contains("floating point"),
        "{e}"
    );
    let s = FaultSpec::from_shorthand("lose:lba=0..18446744073709551615,every=007", false).unwrap();
    assert_eq!(s.matcher.lba, Some((0, u64::MAX)));
    assert_eq!(s.trigger.every, Some(7));
    let e = FaultSpec::from_shorthand("spurious-interrupt:at_ms=500,burst=4294967295", false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key `burst`: 4294967295 is above the limit, 100 signals"),
        "{e}"
    );
}

#[test]
fn a_plan_and_the_engine_hold_at_most_1024_faults() {
    let table = "[[fault]]\nkind = \"lose\"\n";
    let full = table.repeat(MAX_FAULTS);
    assert_eq!(plan(&full).faults.len(), MAX_FAULTS);
    let e = err_text(&format!("{full}{table}"));
    // The 1025th table's header is on line 2 * 1024 + 1.
    assert_eq!(
        e,
        "<plan>:2049:1: fault #1025: a plan holds at most 1024 faults"
    );

    let mut p = plan(&full);
    let one = FaultSpec::from_shorthand("lose", false).unwrap();
    assert!(matches!(p.push(one.clone()), Err(PlanError::TooManyFaults)));
    let mut e = FaultEngine::new(p);
    assert_eq!(e.add_fault(one.clone()), Err(EngineError::TooManyFaults));
    e.remove_fault(1).unwrap();
    assert_eq!(e.add_fault(one), Ok(MAX_FAULTS as u32 + 1));
}
