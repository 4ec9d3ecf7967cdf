# Interrupt entry stubs: one 16-byte stub per vector at isr_stubs + 16 * vector (the
# linker script asserts the size). Each pushes a dummy error code where the CPU pushes
# none, then the vector, and joins isr_common, which saves the general registers and
# calls `isr_dispatch(&TrapFrame)`. The target has SSE off (soft-float), so Rust
# handlers do not touch vector registers and saving the GPRs is enough.

    .section .text.isr, "ax", @progbits
    .code64
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    # Exceptions that push an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX.
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    push $0
    .endif
    push $vector
    jmp isr_common
    .set vector, vector + 1
    .endr
    .balign 16
    .global isr_stubs_end
isr_stubs_end:

isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    cld
    # 15 registers + vector + error code + the CPU's 5-word frame = 22 words; the CPU
    # aligned RSP to 16 before its frame, so RSP is 16-byte aligned here again.
    mov %rsp, %rdi
    call isr_dispatch
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp                   # vector and error code
    iretq
