//! S1 (stalls) and I1 to I4: HwInterrupt and the deferred interrupt callbacks.

use super::*;

#[test]
fn s1_stall_over_1ms_is_allowed_only_in_initialization() {
    let (mut port, mut p) = port(Model {
        init_stall_us: 5_000,
        init_timer_calls: std::vec![10_000],
        timer_stall_us: 1_000,
        ..Model::default()
    });
    ticks(&mut port, &mut p, 2);
    assert_eq!(port.checker().times().max_stall_us, 5_000);
    assert_clean(&port);
}

#[test]
fn s1_mutant_stalling_5ms_in_hwtimer_is_flagged() {
    let (mut port, mut p) = port(Model {
        init_timer_calls: std::vec![10_000],
        timer_stall_us: 5_000,
        ..Model::default()
    });
    ticks(&mut port, &mut p, 2);
    assert_flags(&port, Rule::S1);
    let v = port.checker().violations().next().unwrap();
    assert_eq!((v.routine, v.value), (Routine::Timer, 5_000));
}

#[test]
fn i1_interrupt_of_another_device_is_not_claimed() {
    let (mut port, mut p) = port(irq_model());
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 5); // someone else's vector
    assert_eq!(port.stats().interrupts_not_claimed, 1);
    vector(&mut port, &mut p, 0);
    assert_eq!(port.stats().completed, 1);
    assert_clean(&port);
}

#[test]
fn i1_mutant_claiming_every_interrupt_is_flagged() {
    let (mut port, mut p) = port(Model {
        isr_claims_all: true,
        ..irq_model()
    });
    vector(&mut port, &mut p, 5);
    assert_flags(&port, Rule::I1);
}

#[test]
fn i2_hwinterrupt_time_is_measured_and_short() {
    let (mut port, mut p) = port(Model {
        isr_busy_us: 200,
        ..irq_model()
    });
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 0);
    let t = port.checker().times().interrupt;
    assert_eq!((t.calls, t.max_us), (1, 200));
    assert_clean(&port);
}

#[test]
fn i2_mutant_hwinterrupt_running_2ms_is_flagged() {
    let (mut port, mut p) = port(Model {
        isr_busy_us: 2_000,
        ..irq_model()
    });
    vector(&mut port, &mut p, 0);
    assert_flags(&port, Rule::I2);
}

#[test]
fn i3_long_work_is_deferred_through_call_enable_interrupts() {
    let (mut port, mut p) = port(Model {
        defer: true,
        isr_stalls: 2,
        ..irq_model()
    });
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 0);
    let m = port.miniport().lock();
    assert_eq!((m.enable_at.len(), m.disable_at.len()), (1, 1));
    assert_eq!(port.stats().completed, 1);
    assert_eq!(port.interrupt_phase(), InterruptPhase::Normal);
    assert_clean(&port);
}

#[test]
fn i3_mutant_polling_in_hwinterrupt_without_deferring_is_flagged() {
    let (mut port, mut p) = port(Model {
        isr_stalls: 20, // 200 us of polling
        ..irq_model()
    });
    vector(&mut port, &mut p, 0);
    assert_flags(&port, Rule::I3);
}

fn deferring_model() -> Model {
    Model {
        defer: true,
        enable_runs_before_disable: 2,
        ..irq_model()
    }
}

#[test]
fn i4_hwinterrupt_is_held_off_while_the_enable_callback_runs() {
    let (mut port, mut p) = port(deferring_model());
    port.submit(srb(0)).unwrap();
    port.run_once(&mut p);
    vector(&mut port, &mut p, 0);
    assert_eq!(port.interrupt_phase(), InterruptPhase::EnableCallback);
    // Interrupts arriving now are held until HwDisableInterruptsCallback ran.
    vector(&mut port, &mut p, 0);
    assert_eq!(port.miniport().lock().isr_at.len(), 1);
    vector(&mut port, &mut p, 0);
    let m = port.miniport().lock();
    assert_eq!((m.enable_at.len(), m.disable_at.len()), (3, 1));
    // The held interrupt is delivered once the HBA's interrupts are back on.
    assert_eq!(m.isr_at.len(), 2);
    assert!(m.isr_at[1] >= m.disable_at[0]);
    assert_clean(&port);
}

#[test]
fn i4_mutant_port_calling_hwinterrupt_during_the_callback_is_flagged() {
    let (mut port, mut p) = flawed(deferring_model(), Flaw::InterruptDuringEnableCallback);
    vector(&mut port, &mut p, 0);
    vector(&mut port, &mut p, 0);
    assert_flags(&port, Rule::I4);
}
