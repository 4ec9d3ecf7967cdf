# PVH boot: QEMU's `-kernel` (directly, or through qboot's pvh option ROM) finds the
# XEN_ELFNOTE_PHYS32_ENTRY note and jumps to `pvh_start32` in 32-bit protected mode with
# paging off, interrupts off and %ebx = physical address of `struct hvm_start_info`.
# This file goes from there to 64-bit mode and calls `rust_start(start_info)`.
#
# The other CPUs start in real mode at `ap_trampoline`, which smp.rs copies below 1 MiB;
# it goes straight to 64-bit mode on the same page tables and GDT, and `ap_long_mode_entry`
# gives each CPU its number and stack and calls `ap_rust_start(cpu)`.
#
# Constants come from Rust as `global_asm!` const operands:
#   {UNCACHED_FIRST_PD}  first 2 MiB page of the uncached window (PCI MMIO, IOAPIC, LAPIC)
#   {STACK_SIZE}         boot stack size in bytes
#   {DMA_POOL_BYTES}     size of the DMA pool
#   {MAX_CPUS}           CPUs the image can run (TSS slots, stacks)
#   {AP_STACK_SIZE}      stack of each other CPU, its guard page included
#   {DF_STACK_SIZE}      double-fault stack of each CPU

# The way into long mode, for the boot CPU in 32-bit mode and the others in real mode
# (assembled for the mode where it stands): CR4's PAE (and OSFXSR, OSXMMEXCPT in case
# codegen uses SSE), the boot page tables, EFER.LME, then CR0: EM, CD and NW cleared, PE,
# MP, NE, WP and PG set. Paging on activates long mode; a far jump to the 64-bit code
# segment follows.
.macro enter_long_mode
    mov %cr4, %eax
    or $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    and $~((1 << 2) | (1 << 29) | (1 << 30)), %eax
    or $((1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | 1), %eax
    mov %eax, %cr0
.endm

# 64-bit mode's data segment (0x10) in every data segment register.
.macro load_data_segments
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
.endm

    .section .note.pvh, "a", @note
    .balign 4
    .long 4                         # namesz: "Xen\0"
    .long 8                         # descsz: QEMU reads a 64-bit value for an ELF64 image
    .long 18                        # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .long 0

    .section .text.boot, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    # The time origin of now_us(): as early as possible.
    rdtsc
    mov %eax, boot_tsc
    mov %edx, boot_tsc + 4
    mov %ebx, %ebp                  # start info, kept until rust_start

    # Zero .bss (page tables, Rust statics; not .noinit). The linker script aligns both
    # ends to 4 KiB, so a count of dwords is exact.
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    # PML4[0] -> PDPT; PDPT[0..4] -> the four page directories (4 GiB).
    mov $boot_pdpt, %eax
    or $0x3, %eax                   # present | writable
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, boot_pdpt(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jb 1b

    # 2048 identity-mapped 2 MiB pages. From the PCI MMIO window up to 4 GiB (IOAPIC,
    # LAPIC) they are uncached (PCD | PWT): device registers must not be cached.
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                  # present | writable | 2 MiB page
    cmp ${UNCACHED_FIRST_PD}, %ecx
    jb 3f
    or $0x18, %eax                  # PWT | PCD
3:  mov %eax, boot_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    # The 2 MiB page holding the stack guard is split into 4 KiB pages with the guard
    # page left out, so a stack overflow faults (#PF, then #DF on its own stack) instead
    # of silently overwriting .bss.
    mov $boot_stack_guard, %ebx
    and $~0x1fffff, %ebx            # base of the 2 MiB region
    xor %ecx, %ecx
5:  mov %ecx, %eax
    shl $12, %eax
    add %ebx, %eax
    cmp $boot_stack_guard, %eax
    je 6f                           # leave the guard page not present
    or $0x3, %eax                   # present | writable
    mov %eax, boot_stack_pt(,%ecx,8)
6:  inc %ecx
    cmp $512, %ecx
    jb 5b
    mov %ebx, %ecx
    shr $21, %ecx                   # its index among the 2048 directory entries
    mov $boot_stack_pt, %eax
    or $0x3, %eax
    mov %eax, boot_pd(,%ecx,8)

    # The other CPUs' stacks fill one 2 MiB page of their own; it is split the same way,
    # with the first 4 KiB page of each stack left out as its guard.
    mov $ap_stacks, %ebx
    xor %ecx, %ecx
7:  mov %ecx, %eax
    shl $12, %eax
    add %ebx, %eax
    test $({AP_STACK_SIZE} - 1), %eax
    jz 8f                           # the bottom page of a stack: its guard
    or $0x3, %eax
    mov %eax, ap_stack_pt(,%ecx,8)
8:  inc %ecx
    cmp $512, %ecx
    jb 7b
    mov %ebx, %ecx
    shr $21, %ecx
    mov $ap_stack_pt, %eax
    or $0x3, %eax
    mov %eax, boot_pd(,%ecx,8)

    enter_long_mode
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

    .code64
    .global long_mode_entry
long_mode_entry:
    load_data_segments
    mov $boot_stack_top, %rsp       # 16-byte aligned, as the SysV ABI wants before a call
    mov %ebp, %edi                  # rust_start(start_info_paddr: u32)
    xor %ebp, %ebp                  # end of the frame-pointer chain
    call rust_start
4:  cli
    hlt
    jmp 4b

    # Another CPU, in 64-bit mode: its number is the next ticket, its stack the one of
    # that number. A CPU past MAX_CPUS halts.
    .global ap_long_mode_entry
ap_long_mode_entry:
    load_data_segments
    mov $1, %eax
    lock xaddl %eax, ap_next_cpu(%rip)
    cmp ${MAX_CPUS}, %eax
    jae 9f
    mov %eax, %edi                  # ap_rust_start(cpu: u32)
    lea 1(%rax), %rdx
    imul ${AP_STACK_SIZE}, %rdx
    lea ap_stacks(%rip), %rsp
    add %rdx, %rsp                  # top of stack `cpu`, 16-byte aligned
    xor %ebp, %ebp
    call ap_rust_start
9:  cli
    hlt
    jmp 9b

    # The other CPUs' first instructions: smp.rs copies these bytes to a page below
    # 1 MiB and sends its number as the startup vector, so CS is that page and IP 0.
    # Real mode goes straight to 64-bit mode: PE and PG set together, then the far jump.
    .section .text.ap_trampoline, "ax", @progbits
    .code16
    .global ap_trampoline
ap_trampoline:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_gdt_ptr - ap_trampoline)
    enter_long_mode
    ljmpl $0x08, $ap_long_mode_entry
    .balign 4
ap_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .global ap_trampoline_end
ap_trampoline_end:
    .code64

    # Writable: ltr marks the TSS descriptor busy.
    .section .data.boot, "aw", @progbits
    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0                         # null
    .quad 0x00af9a000000ffff        # 0x08: 64-bit code, ring 0
    .quad 0x00cf92000000ffff        # 0x10: data
    .global boot_gdt_tss
boot_gdt_tss:
    .skip 16 * {MAX_CPUS}           # 0x18 + 16 * cpu: 64-bit TSS, filled in by interrupts
boot_gdt_end:
    .balign 4
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .data.boot, "aw", @progbits
    .balign 8
    .global boot_tsc
boot_tsc:
    .quad 0
    # The next CPU number to hand out; the boot CPU is 0.
ap_next_cpu:
    .long 1

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack_pt:
    .skip 4096
ap_stack_pt:
    .skip 4096

# Not zeroed at boot: touching every page costs ~0.4 ms each under nested KVM, and
# neither the stack nor the DMA pool (zeroed per allocation) needs it.
    .section .noinit.stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard
boot_stack_guard:
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {STACK_SIZE}
    .global boot_stack_top
boot_stack_top:
    # The double-fault handler's stack (TSS IST1): the boot stack may be the reason.
    .balign 16
    .skip 16384
    .global double_fault_stack_top
double_fault_stack_top:

    # The other CPUs' stacks: one 2 MiB page, AP_STACK_SIZE each (CPU 0's is unused),
    # the bottom 4 KiB of each unmapped as its guard. Their double-fault stacks follow.
    .section .noinit.ap_stacks, "aw", @nobits
    .balign 0x200000
    .global ap_stacks
ap_stacks:
    .skip {MAX_CPUS} * {AP_STACK_SIZE}
    .global ap_stacks_end
ap_stacks_end:
    .balign 16
    .global ap_double_fault_stacks
ap_double_fault_stacks:
    .skip {MAX_CPUS} * {DF_STACK_SIZE}

    .section .noinit.dma, "aw", @nobits
    .balign 4096
    .global dma_pool
dma_pool:
    .skip {DMA_POOL_BYTES}
    .global dma_pool_end
dma_pool_end:
