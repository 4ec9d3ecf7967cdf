//! The plan's parsing, validation, shorthand and presets, and where its errors point.

use super::*;
use crate::faults::presets::{preset_toml, PRESET_NAMES};
use crate::faults::tests::{err_text, ms, plan, READ_10};
use crate::faults::{EngineError, FaultEngine};

mod bounds;

#[test]
fn plan_parses_every_kind_and_key() {
    let p = plan(
        r#"
seed = 42
allow_corruption = true

[[fault]]
name = "irq"
kind = "drop-interrupt"
queue = "request"
every = 3

[[fault]]
kind = "delay"
opcode = "read-10"
distribution = "uniform"
min_ms = 1
max_ms = 5
probability = 0.5

[[fault]]
kind = "lose"
target = 1
lun = 2
lba = [100, 200]
direction = "write"
after = 10
times = 2

[[fault]]
kind = "slow-tmf"
tmf = "lu-reset"
duration_ms = 500
new_commands = "hold"

[[fault]]
kind = "hang-tmf"
tmf = "nexus-reset"
once = true

[[fault]]
kind = "fail-tmf"
response = "failed"
window_ms = [100, 200]

[[fault]]
kind = "spurious-interrupt"
queue = 3
interval_ms = 20
burst = 4

[[fault]]
kind = "status"
opcode = 0x2a
status = "check-condition"
sense_key = 3
asc = 0x11
ascq = 0
state = 1
set_state = 2

[[fault]]
kind = "event"
event = "param-change"
target = 1
at_ms = 1000

[[fault]]
kind = "corrupt"
opcode = 40
bytes = 4
enabled = false
"#,
    );
    assert_eq!(p.seed, 42);
    assert_eq!(p.faults.len(), 10);
    let f = &p.faults;
    assert_eq!(f[0].name.as_deref(), Some("irq"));
    assert_eq!(f[0].matcher.queue, QueueMatch::Request);
    assert_eq!(f[0].trigger.every, Some(3));
    assert_eq!(f[1].matcher.opcode, Some(READ_10));
    assert_eq!(f[1].matcher.class, RequestClass::Command);
    assert_eq!(
        f[1].action,
        FaultAction::Delay(DelayDist::Uniform {
            min: ms(1),
            max: ms(5)
        })
    );
    assert_eq!(f[2].matcher.lba, Some((100, 200)));
    assert_eq!(f[2].matcher.direction, Some(DataDirection::Write));
    assert_eq!((f[2].trigger.after, f[2].trigger.times), (10, Some(2)));
    assert_eq!(
        f[3].action,
        FaultAction::SlowTmf {
            duration: ms(500),
            new_commands: NewCommandPolicy::Hold
        }
    );
    assert_eq!(
        f[3].matcher.class,
        RequestClass::Tmf(Some(TmfKind::LogicalUnitReset))
    );
    assert_eq!(
        f[4].matcher.class,
        RequestClass::Tmf(Some(TmfKind::ITNexusReset))
    );
    assert_eq!(f[4].trigger.times, Some(1));
    assert_eq!(f[5].action, FaultAction::FailTmf(TmfFailure::Failure));
    assert_eq!(f[5].trigger.window, Some((ms(100), ms(200))));
    assert_eq!(
        f[6].action,
        FaultAction::SpuriousInterrupt {
            queue: 3,
            burst: 4,
            schedule: Schedule {
                first: ms(20),
                interval: Some(ms(20))
            }
        }
    );
    assert_eq!(
        f[7].action,
        FaultAction::Status(StatusOverride::CheckCondition {
            sense_key: 3,
            asc: 0x11,
            ascq: 0
        })
    );
    assert_eq!(
        (f[7].trigger.state, f[7].trigger.set_state),
        (Some(1), Some(2))
    );
    assert_eq!(
        f[8].action,
        FaultAction::Event {
            event: VirtioEvent::ParamChange {
                target: 1,
                lun: 0,
                asc: 0x2a,
                ascq: 0x09
            },
            schedule: Schedule {
                first: ms(1000),
                interval: None
            }
        }
    );
    assert_eq!(f[9].action, FaultAction::Corrupt { bytes: 4 });
    assert!(!f[9].enabled);
}

#[test]
fn opcode_names_and_numbers() {
    for (v, want) in [
        (NumOrName::Name("read-10".into()), 0x28),
        (NumOrName::Name("READ_10".into()), 0x28),
        (NumOrName::Name("0x2a".into()), 0x2a),
        (NumOrName::Name("40".into()), 40),
        (NumOrName::Num(0x35), 0x35),
        (NumOrName::Name("synchronize-cache-10".into()), 0x35),
        (NumOrName::Name("test-unit-ready".into()), 0),
        (NumOrName::Name("inquiry".into()), 0x12),
        (NumOrName::Name("unmap".into()), 0x42),
        (NumOrName::Name("write-16".into()), 0x8a),
    ] {
        assert_eq!(parse_opcode(&v), Ok(want), "{v:?}");
    }
    assert!(parse_opcode(&NumOrName::Num(256)).is_err());
    assert!(parse_opcode(&NumOrName::Name("read-11".into())).is_err());
    assert_eq!(opcode_name(0x28), Some("read-10"));
    assert_eq!(opcode_name(0x9e), Some("service-action-in-16"));
    assert_eq!(opcode_name(0xff), None);
}

#[test]
fn syntax_error_reports_line_and_column() {
    let e = err_text("seed = 1\n\n[[fault]]\nkind = \"lose\"\nevery = = 3\n");
    assert!(e.starts_with("<plan>:5:"), "{e}");
}

#[test]
fn unknown_key_reports_its_line_and_column() {
    let e = err_text("seed = 1\n[[fault]]\nkind = \"lose\"\n  evry = 3\n");
    assert_eq!(e, "<plan>:4:3: unknown key `evry` (did you mean `every`?)");
    let e = err_text("[[fault]]\nkind = \"lose\"\ntarget = 300\n");
    assert_eq!(
        e,
        "<plan>:3:10: invalid value: integer `300`, expected an integer from 0 to 255"
    );
}

#[test]
fn out_of_range_values_report_the_key_position() {
    let cases = [
        (
            "[[fault]]\nkind = \"lose\"\nprobability = 1.5\n",
            "<plan>:3:1: ",
            "probability",
        ),
        (
            "[[fault]]\nkind = \"lose\"\n every = 0\n",
            "<plan>:3:2: ",
            "every",
        ),
        (
            "[[fault]]\nkind = \"lose\"\nwindow_ms = [5, 1]\n",
            "<plan>:3:1: ",
            "window_ms",
        ),
        (
            "[[fault]]\nkind = \"lose\"\ntimes = 0\n",
            "<plan>:3:1: ",
            "times",
        ),
        (
            "[[fault]]\nkind = \"lose\"\nlba = [9, 1]\n",
            "<plan>:3:1: ",
            "lba",
        ),
        (
            "[[fault]]\nkind = \"lose\"\ndelay_ms = 3\n",
            "<plan>:3:1: ",
            "does not apply",
        ),
        (
            "[[fault]]\nkind = \"teleport\"\n",
            "<plan>:2:1: ",
            "unknown fault kind",
        ),
        (
            "[[fault]]\nkind = \"lose\"\nopcode = \"read-11\"\n",
            "<plan>:3:1: ",
            "read-11",
        ),
        (
            "[[fault]]\nkind = \"lose\"\nlun = 20000\n",
            "<plan>:3:1: ",
            "lun",
        ),
        (
            "[[fault]]\nkind = \"hang-tmf\"\ntmf = \"warp\"\n",
            "<plan>:3:1: ",
            "warp",
        ),
        (
            "[[fault]]\nkind = \"status\"\nstatus = \"busy\"\nsense_key = 2\n",
            "<plan>:4:1: ",
            "check-condition",
        ),
        (
            "[[fault]]\nkind = \"status\"\nstatus = \"check-condition\"\nsense_key = 16\n",
            "<plan>:4:1: ",
            "0xf",
        ),
        (
            "[[fault]]\nkind = \"delay\"\ndistribution = \"uniform\"\nmin_ms = 9\nmax_ms = 1\n",
            "<plan>:4:1: ",
            "min_ms",
        ),
        (
            "[[fault]]\nkind = \"lose\"\nonce = true\ntimes = 2\n",
            "<plan>:3:1: ",
            "once",
        ),
        (
            "[[fault]]\nkind = \"drop-interrupt\"\ntmf = \"lu-reset\"\nopcode = 1\n",
            "<plan>:4:1: ",
            "only SCSI commands",
        ),
    ];
    for (text, at, what) in cases {
        let e = err_text(text);
        assert!(e.starts_with(at) && e.contains(what), "{text:?} gave {e}");
    }
}

#[test]
fn missing_parameter_points_at_the_fault_header() {
    let e = err_text("seed = 1\n\n[[fault]]\nkind = \"slow-tmf\"\nduration_ms = 5\n  [[fault]]\nkind = \"status\"\n");
    assert!(e.starts_with("<plan>:6:3: fault #2: "), "{e}");
    assert!(e.contains("needs `status`"), "{e}");
}

#[test]
fn key_error_in_a_later_fault_points_at_that_key() {
    let e = err_text(
        "[[fault]]\nkind = \"lose\"\n\n[[fault]]\nkind = \"delay\"\ndelay_ms = 1\n    every = 0\n",
    );
    assert!(e.starts_with("<plan>:7:5: fault #2: key `every`"), "{e}");
    let e =
        err_text("[[fault]]\nkind = \"lose\"\n[[fault]]\nkind = \"lose\"\nqueue = \"sideways\"\n");
    assert!(e.starts_with("<plan>:5:1: fault #2: key `queue`"), "{e}");
}

#[test]
fn command_line_composes_file_presets_and_shorthands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, "seed = 11\n[[fault]]\nkind = \"lose\"\n").unwrap();
    let p = Plan::from_cli(
        Some(&path),
        &["hung-reset".into()],
        &["drop-interrupt:every=2".into(), "delay:delay_ms=3".into()],
    )
    .unwrap();
    assert_eq!(p.seed, 11);
    let kinds: Vec<FaultKind> = p.faults.iter().map(|f| f.action.kind()).collect();
    use FaultKind::*;
    assert_eq!(kinds, vec![Lose, HangTmf, HangTmf, DropInterrupt, Delay]);
    assert_eq!(
        Plan::from_cli(None, &["lossy".into()], &[]).unwrap().seed,
        4
    );
    // A file that gives no seed leaves it to the first preset; one that does keeps it.
    std::fs::write(&path, "[[fault]]\nkind = \"lose\"\n").unwrap();
    let presets = ["lossy".to_string(), "flaky-irq".to_string()];
    assert_eq!(Plan::from_cli(Some(&path), &presets, &[]).unwrap().seed, 4);
    assert_eq!(
        Plan::from_cli(Some(&path), &[], &[]).unwrap().seed,
        Plan::DEFAULT_SEED
    );
    std::fs::write(&path, "seed = 0\n[[fault]]\nkind = \"lose\"\n").unwrap();
    assert_eq!(Plan::from_cli(Some(&path), &presets, &[]).unwrap().seed, 0);
    assert!(Plan::from_cli(None, &[], &[]).unwrap().is_empty());
    assert!(matches!(
        Plan::from_cli(None, &[], &["corrupt".into()]),
        Err(PlanError::InvalidShorthand { .. })
    ));
}

#[test]
fn corrupt_is_refused_without_allow_corruption() {
    let e = err_text("[[fault]]\nkind = \"corrupt\"\n");
    assert!(
        e.starts_with("<plan>:2:1: ") && e.contains("allow_corruption"),
        "{e}"
    );
    let p = plan("allow_corruption = true\n[[fault]]\nkind = \"corrupt\"\n");
    assert_eq!(p.faults[0].action, FaultAction::Corrupt { bytes: 1 });
    assert!(matches!(
        FaultSpec::from_shorthand("corrupt:bytes=2", false),
        Err(PlanError::InvalidShorthand { .. })
    ));
    let spec = FaultSpec::from_shorthand("corrupt:bytes=2", true).unwrap();
    let mut strict = Plan::default();
    assert!(matches!(
        strict.push(spec.clone()),
        Err(PlanError::CorruptionNotAllowed)
    ));
    let mut e = FaultEngine::new(Plan::default());
    assert_eq!(e.add_fault(spec), Err(EngineError::CorruptionNotAllowed));
}

#[test]
fn plan_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "seed = 1\n[[fault]]\nkind = \"lose\"\nprobability = -1.0\n",
    )
    .unwrap();
    let e = Plan::from_file(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:4:1: fault #1: key `probability`: -1 is not between 0 and 1",
            path.display()
        )
    );
    assert!(matches!(
        Plan::from_file(&dir.path().join("missing.toml")),
        Err(PlanError::CouldNotRead { .. })
    ));
}

#[test]
fn parser_never_panics_on_mangled_plans() {
    let base = preset_toml("error-storm").unwrap();
    // Every prefix of a valid plan, plus a few hostile texts.
    for end in (0..base.len()).filter(|&i| base.is_char_boundary(i)) {
        let _ = Plan::from_toml_str(&base[..end]);
    }
    for text in [
        "[[fault]]",
        "fault = 3",
        "[[fault]]\nkind = 3",
        "seed = -1",
        "\u{0}",
        "[[fault]]\nkind=\"delay\"\ndistribution=\"long-tail\"\nmin_ms=1\nmax_ms=2\nalpha=nan",
    ] {
        assert!(Plan::from_toml_str(text).is_err(), "{text:?}");
    }
}

#[test]
fn shorthand_maps_onto_the_table_form() {
    let short = FaultSpec::from_shorthand("drop-interrupt:every=3,queue=request", false).unwrap();
    let long = plan("[[fault]]\nkind = \"drop-interrupt\"\nevery = 3\nqueue = \"request\"\n");
    assert_eq!(short, long.faults[0]);
    let s = FaultSpec::from_shorthand(
        "lose: opcode=0x28, lba=10..20, probability=0.25, name=slow",
        false,
    )
    .unwrap();
    assert_eq!(s.matcher.opcode, Some(READ_10));
    assert_eq!(s.matcher.lba, Some((10, 20)));
    assert_eq!(s.trigger.probability, Some(0.25));
    assert_eq!(s.name.as_deref(), Some("slow"));
    let s = FaultSpec::from_shorthand("hang-tmf", false).unwrap();
    assert_eq!(s.action, FaultAction::HangTmf);
    for (bad, what) in [
        ("drop-interrupt:every", "key=value"),
        ("drop-interrupt:evry=3", "evry"),
        ("drop-interrupt:every=0", "every"),
        ("drop-interrupt:every=3,every=4", "twice"),
        ("nonsense:every=3", "unknown fault kind"),
        (":every=3", "missing fault kind"),
        ("delay:delay_ms=fast", "delay_ms"),
    ] {
        match FaultSpec::from_shorthand(bad, false) {
            Err(e @ PlanError::InvalidShorthand { .. }) => {
                let e = e.to_string();
                assert!(
                    e.starts_with(&format!("--fault `{bad}`: ")) && e.contains(what),
                    "{e}"
                );
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn presets_are_valid_plans() {
    for name in PRESET_NAMES {
        let p = Plan::from_preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!p.faults.is_empty(), "{name}");
        assert!(preset_toml(name).is_some());
    }
    assert!(matches!(
        Plan::from_preset("nope"),
        Err(PlanError::UnknownPreset { .. })
    ));
    let mut p = Plan::from_preset("flaky-irq").unwrap();
    p.extend(Plan::from_preset("slow-reset").unwrap()).unwrap();
    assert_eq!(p.faults.len(), 5);
    assert_eq!(p.seed, 1);
}

#[test]
fn documented_examples_are_valid() {
    let doc = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/fault-plan.md"
    ));
    let mut plans = 0;
    for block in doc.split("```toml\n").skip(1) {
        let text = block.split("```").next().unwrap();
        Plan::from_toml_str(text).unwrap_or_else(|e| panic!("{e} in\n{text}"));
        plans += 1;
    }
    let mut shorthands = 0;
    for line in doc.lines().filter(|l| l.starts_with("--fault '")) {
        let text = line
            .trim_start_matches("--fault '")
            .split('\'')
            .next()
            .unwrap();
        FaultSpec::from_shorthand(text, false).unwrap_or_else(|e| panic!("{e}"));
        shorthands += 1;
    }
    assert!(
        plans >= 2 && shorthands >= 5,
        "{plans} plans, {shorthands} shorthands"
    );
    for name in PRESET_NAMES {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "preset {name} is not documented"
        );
    }
}
