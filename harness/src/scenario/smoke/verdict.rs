//! The verdict on a smoke run: QEMU's exit status and the guest's result line must both
//! say pass, and the disk image, read by the harness on its own, must hold the seeded
//! pattern at every LBA the guest claims to have written.

use std::collections::BTreeSet;
use std::io::{Read, Seek};

use guest_miniport::contract::{qemu_status_for, result_fields as f, EXIT_PASS};
use serde_json::{Map, Value};

use crate::scenario::image::{check_image, MAX_BLOCK_SIZE};

/// How many bad LBAs an error lists.
const SHOWN_BAD_LBAS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("the guest sent no result line (QEMU exit status {0})")]
    NoResult(String),
    #[error("the guest reported {result:?}: {reason}")]
    GuestFailed { result: String, reason: String },
    #[error("QEMU exit status {got}, expected {want} (isa-debug-exit {EXIT_PASS:#x})")]
    WrongExitStatus { got: String, want: i32 },
    #[error("the result line lacks {0:?}")]
    MissingField(&'static str),
    #[error("the result line has a bad {field:?}: {value}")]
    BadField { field: &'static str, value: String },
    #[error("the result line echoes {field}={got}, but the harness asked for {want}")]
    EchoMismatch {
        field: &'static str,
        got: String,
        want: String,
    },
    #[error("the guest wrote {got} blocks, the harness asked for {want}")]
    WrongBlockCount { got: usize, want: u32 },
    #[error("the guest reports LBA {0} more than once")]
    DuplicateLba(u64),
    #[error("LBA {lba} lies beyond the {image_bytes}-byte image")]
    LbaOutsideImage { lba: u64, image_bytes: u64 },
    #[error("{count} of {total} blocks lack the pattern in the image, LBAs {shown:?}")]
    PatternMismatch {
        count: usize,
        total: usize,
        shown: Vec<u64>,
    },
    #[error("with irq=off {0} requests completed by interrupt")]
    InterruptWithIrqOff(u64),
    #[error("the port's rule checker reports {count} violation(s): {list}")]
    RuleViolations { count: u64, list: String },
    #[error("could not read the disk image: {0}")]
    CouldNotReadImage(std::io::Error),
}

/// What the harness asked the smoke guest for; the result line's echoes must match.
#[derive(Clone, Copy, Debug)]
pub struct SmokeParams {
    pub seed: u64,
    pub blocks: u32,
    pub irq: bool,
}

/// A passed run's numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub blocks_verified: usize,
    pub block_size: u64,
    pub guest_elapsed_us: Option<u64>,
    pub completed_by_interrupt: Option<u64>,
    pub completed_by_poll: Option<u64>,
}

fn exit_text(code: Option<i32>) -> String {
    code.map_or_else(|| "none (killed by a signal)".into(), |c| c.to_string())
}

fn u64_field(result: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, JudgeError> {
    match result.get(field) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| JudgeError::BadField {
            field,
            value: v.to_string(),
        }),
    }
}

fn echo<T: PartialEq + ToString>(
    field: &'static str,
    got: Option<T>,
    want: T,
) -> Result<(), JudgeError> {
    match got {
        Some(got) if got != want => Err(JudgeError::EchoMismatch {
            field,
            got: got.to_string(),
            want: want.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Judges a smoke run. `qemu_exit` is QEMU's exit code (None: killed by a signal),
/// `result` the guest's last result line, `image` the disk image after the run.
pub fn judge_smoke(
    qemu_exit: Option<i32>,
    result: Option<&Map<String, Value>>,
    image: &mut (impl Read + Seek),
    expect: SmokeParams,
) -> Result<Verdict, JudgeError> {
    let result = result.ok_or_else(|| JudgeError::NoResult(exit_text(qemu_exit)))?;
    check_outcome(result, qemu_exit)?;
    check_echoes(result, expect)?;
    let (block_size, lbas) = written_blocks(result, expect)?;
    check_violations(result)?;
    let completed_by_interrupt = u64_field(result, f::COMPLETED_BY_INTERRUPT)?;
    let completed_by_poll = u64_field(result, f::COMPLETED_BY_POLL)?;
    // irq=off: the miniport asked for no interrupts, so none may complete a request.
    if let (false, Some(n @ 1..)) = (expect.irq, completed_by_interrupt) {
        return Err(JudgeError::InterruptWithIrqOff(n));
    }
    check_image_holds(image, expect.seed, block_size, &lbas)?;
    Ok(Verdict {
        blocks_verified: lbas.len(),
        block_size,
        guest_elapsed_us: u64_field(result, f::ELAPSED_US)?,
        completed_by_interrupt,
        completed_by_poll,
    })
}

/// The guest says pass, and QEMU's exit status says so too.
fn check_outcome(result: &Map<String, Value>, qemu_exit: Option<i32>) -> Result<(), JudgeError> {
    let outcome = match result.get(f::RESULT) {
        Some(Value::String(s)) => s.as_str(),
        other => {
            return Err(JudgeError::BadField {
                field: f::RESULT,
                value: format!("{other:?}"),
            })
        }
    };
    if outcome != "pass" {
        let reason = result
            .get(f::REASON)
            .and_then(Value::as_str)
            .unwrap_or("(no reason given)");
        return Err(JudgeError::GuestFailed {
            result: outcome.to_owned(),
            reason: reason.to_owned(),
        });
    }
    let want = qemu_status_for(EXIT_PASS);
    if qemu_exit != Some(want) {
        return Err(JudgeError::WrongExitStatus {
            got: exit_text(qemu_exit),
            want,
        });
    }
    Ok(())
}

/// The echoes are optional in the contract, but when present they must match.
fn check_echoes(result: &Map<String, Value>, expect: SmokeParams) -> Result<(), JudgeError> {
    echo(f::SEED, u64_field(result, f::SEED)?, expect.seed)?;
    let irq = match result.get(f::IRQ) {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            return Err(JudgeError::BadField {
                field: f::IRQ,
                value: v.to_string(),
            })
        }
    };
    echo(f::IRQ, irq, expect.irq)
}

/// The block size and the LBAs the guest says it wrote: as many as asked for, each once.
fn written_blocks(
    result: &Map<String, Value>,
    expect: SmokeParams,
) -> Result<(u64, Vec<u64>), JudgeError> {
    let block_size =
        u64_field(result, f::BLOCK_SIZE)?.ok_or(JudgeError::MissingField(f::BLOCK_SIZE))?;
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(JudgeError::BadField {
            field: f::BLOCK_SIZE,
            value: block_size.to_string(),
        });
    }
    let lbas: Vec<u64> = match result.get(f::LBAS) {
        None => return Err(JudgeError::MissingField(f::LBAS)),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64().ok_or_else(|| JudgeError::BadField {
                    field: f::LBAS,
                    value: v.to_string(),
                })
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(JudgeError::BadField {
                field: f::LBAS,
                value: v.to_string(),
            })
        }
    };
    if lbas.len() != expect.blocks as usize {
        return Err(JudgeError::WrongBlockCount {
            got: lbas.len(),
            want: expect.blocks,
        });
    }
    let mut seen = BTreeSet::new();
    if let Some(&dup) = lbas.iter().find(|&&lba| !seen.insert(lba)) {
        return Err(JudgeError::DuplicateLba(dup));
    }
    Ok((block_size, lbas))
}

/// The port's rule checker (docs/miniport-rules.md) must have found nothing.
fn check_violations(result: &Map<String, Value>) -> Result<(), JudgeError> {
    let violations =
        u64_field(result, f::VIOLATIONS)?.ok_or(JudgeError::MissingField(f::VIOLATIONS))?;
    if violations != 0 {
        let list = result
            .get(f::VIOLATION_LIST)
            .map_or_else(|| "(no list)".to_owned(), Value::to_string);
        return Err(JudgeError::RuleViolations {
            count: violations,
            list,
        });
    }
    Ok(())
}

/// The harness's own look: every LBA holds the pattern of `seed`, inside the image.
fn check_image_holds(
    image: &mut (impl Read + Seek),
    seed: u64,
    block_size: u64,
    lbas: &[u64],
) -> Result<(), JudgeError> {
    let check =
        check_image(image, seed, block_size, lbas).map_err(JudgeError::CouldNotReadImage)?;
    if let Some(&lba) = check.outside.first() {
        return Err(JudgeError::LbaOutsideImage {
            lba,
            image_bytes: check.image_bytes,
        });
    }
    if !check.bad.is_empty() {
        return Err(JudgeError::PatternMismatch {
            count: check.bad.len(),
            total: lbas.len(),
            shown: check.bad.into_iter().take(SHOWN_BAD_LBAS).collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_miniport::contract::{fill_pattern, EXIT_FAIL};
    use serde_json::json;
    use std::io::Cursor;

    const BS: u64 = 512;
    const PASS: Option<i32> = Some(qemu_status_for(EXIT_PASS));

    fn expect(irq: bool) -> SmokeParams {
        SmokeParams {
            seed: 5,
            blocks: 4,
            irq,
        }
    }

    /// An image of 64 blocks with the pattern of `seed` written at `lbas`.
    fn image(seed: u64, lbas: &[u64]) -> Cursor<Vec<u8>> {
        let mut bytes = vec![0u8; 64 * BS as usize];
        for &lba in lbas {
            let at = (lba * BS) as usize;
            fill_pattern(seed, lba, &mut bytes[at..at + BS as usize]);
        }
        Cursor::new(bytes)
    }

    fn result(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else { panic!() };
        map
    }

    fn good() -> Map<String, Value> {
        result(json!({
            "result": "pass", "scenario": "smoke", "seed": 5, "irq": true,
            "block_size": 512, "capacity": 64, "lbas": [1, 17, 33, 60],
            "elapsed_us": 1234, "completed_by_interrupt": 9, "completed_by_poll": 1,
            "violations": 0, "violation_list": []
        }))
    }

    #[test]
    fn rule_violations_fail_and_are_named() {
        let mut r = good();
        r.insert("violations".into(), json!(1));
        r.insert(
            "violation_list".into(),
            json!([{"rule": "S1", "routine": "HwTimer", "time_us": 5, "message": "stall", "value": 2000}]),
        );
        let err = judge_smoke(
            PASS,
            Some(&r),
            &mut image(5, &[1, 17, 33, 60]),
            expect(true),
        )
        .unwrap_err();
        match &err {
            JudgeError::RuleViolations { count: 1, list } => assert!(list.contains("S1"), "{list}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_violation_count_fails() {
        let mut r = good();
        r.remove("violations");
        let err = judge_smoke(
            PASS,
            Some(&r),
            &mut image(5, &[1, 17, 33, 60]),
            expect(true),
        )
        .unwrap_err();
        assert!(
            matches!(err, JudgeError::MissingField("violations")),
            "{err:?}"
        );
    }

    #[test]
    fn a_good_run_passes() {
        let verdict = judge_smoke(
            PASS,
            Some(&good()),
            &mut image(5, &[1, 17, 33, 60]),
            expect(true),
        )
        .unwrap();
        assert_eq!(verdict.blocks_verified, 4);
        assert_eq!(verdict.guest_elapsed_us, Some(1234));
        assert_eq!(verdict.completed_by_interrupt, Some(9));
    }

    #[test]
    fn a_wrong_pattern_in_the_image_fails() {
        // LBA 33 holds the pattern of another seed; LBA 60 was never written.
        let mut img = image(5, &[1, 17]);
        let at = (33 * BS) as usize;
        fill_pattern(6, 33, &mut img.get_mut()[at..at + BS as usize]);
        let err = judge_smoke(PASS, Some(&good()), &mut img, expect(true)).unwrap_err();
        match err {
            JudgeError::PatternMismatch {
                count,
                total,
                shown,
            } => {
                assert_eq!((count, total), (2, 4));
                assert_eq!(shown, [33, 60]);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_missing_result_fails() {
        let err = judge_smoke(PASS, None, &mut image(5, &[]), expect(true)).unwrap_err();
        assert!(matches!(err, JudgeError::NoResult(_)), "{err}");
    }

    #[test]
    fn a_wrong_exit_status_fails() {
        let mut img = image(5, &[1, 17, 33, 60]);
        for exit in [Some(qemu_status_for(EXIT_FAIL)), Some(0), Some(1), None] {
            let err = judge_smoke(exit, Some(&good()), &mut img, expect(true)).unwrap_err();
            assert!(matches!(err, JudgeError::WrongExitStatus { .. }), "{err}");
        }
    }

    #[test]
    fn a_failed_result_fails_with_its_reason() {
        let mut r = good();
        r.insert("result".into(), json!("fail"));
        r.insert("reason".into(), json!("READ CAPACITY timed out"));
        let err = judge_smoke(
            PASS,
            Some(&r),
            &mut image(5, &[1, 17, 33, 60]),
            expect(true),
        )
        .unwrap_err();
        assert!(err.to_string().contains("READ CAPACITY timed out"), "{err}");
    }

    #[test]
    fn block_count_duplicates_and_range_are_checked() {
        let mut img = image(5, &[1, 17, 33, 60]);
        let cases = [
            (json!([1, 17, 33]), "WrongBlockCount"),
            (json!([1, 17, 17, 60]), "DuplicateLba"),
            (json!([1, 17, 33, 64]), "LbaOutsideImage"),
            (json!([1, 17, 33, u64::MAX]), "LbaOutsideImage"),
            (json!([1, 17, 33, -1]), "BadField"),
        ];
        for (lbas, want) in cases {
            let mut r = good();
            r.insert("lbas".into(), lbas.clone());
            let err = judge_smoke(PASS, Some(&r), &mut img, expect(true)).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{lbas}: {err:?}");
        }
    }

    #[test]
    fn missing_fields_and_wrong_echoes_fail() {
        let mut img = image(5, &[1, 17, 33, 60]);
        for field in ["block_size", "lbas"] {
            let mut r = good();
            r.remove(field);
            let err = judge_smoke(PASS, Some(&r), &mut img, expect(true)).unwrap_err();
            assert!(matches!(err, JudgeError::MissingField(_)), "{field}: {err}");
        }
        let mut r = good();
        r.insert("seed".into(), json!(6));
        let err = judge_smoke(PASS, Some(&r), &mut img, expect(true)).unwrap_err();
        assert!(matches!(err, JudgeError::EchoMismatch { .. }), "{err}");
        let err = judge_smoke(PASS, Some(&good()), &mut img, expect(false)).unwrap_err();
        assert!(
            matches!(err, JudgeError::EchoMismatch { field: "irq", .. }),
            "{err}"
        );
    }

    #[test]
    fn interrupt_completions_with_irq_off_fail() {
        let mut img = image(5, &[1, 17, 33, 60]);
        let mut r = good();
        r.insert("irq".into(), json!(false));
        let err = judge_smoke(PASS, Some(&r), &mut img, expect(false)).unwrap_err();
        assert!(matches!(err, JudgeError::InterruptWithIrqOff(9)), "{err}");
        r.insert("completed_by_interrupt".into(), json!(0));
        judge_smoke(PASS, Some(&r), &mut img, expect(false)).unwrap();
    }
}
