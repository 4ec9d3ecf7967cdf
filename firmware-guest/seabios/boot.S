# SeaBIOS guest: a boot sector that tests the BIOS's disk driver through INT 13h.
#
# Stage 1 (LBA 0, 446 bytes before the partition table) loads stage 2 (STAGE2_BLOCKS
# blocks from STAGE2_LBA) with INT 13h AH=42h to 0x7e00. Stage 2 then
#   1. reads PATTERN_BLOCKS blocks from PATTERN_LBA (AH=42h) and checks every stamp,
#   2. writes WRITE_BLOCKS blocks at WRITE_LBA (AH=43h) stamped with a generation of
#      its own (from the TSC),
#   3. reads them back (AH=42h) and checks them,
# CHUNK_BLOCKS blocks per call. The first failure stops the sequence; then the first chunk
# of the pattern is read once more, to show whether the disk still works. Every outcome is
# one JSON line on COM1; QEMU is left through isa-debug-exit (0x10 pass, 0x11 fail).
#
# A stamp is 16 bytes, 32 of them per block: "FHBA", the block's LBA, the generation and
# the slot's index in the block (u32 little-endian each), so a misplaced, stale or partly
# transferred block is caught.
#
# The layout constants come from ../layout.env through `as --defsym` (see build.sh).

        .code16
        .intel_syntax noprefix

        .set    COM1, 0x3f8
        .set    DEBUG_EXIT, 0xf4
        .set    EXIT_PASS, 0x10
        .set    EXIT_FAIL, 0x11
        .set    TAG, 0x41424846                 # "FHBA"
        .set    SLOTS, 32                       # stamps per block
        .set    BUF_SEG, 0x1000                 # the data buffer: 0x10000, one chunk
        .set    STAGE2_ADDR, 0x7e00

        .text
        .globl  _start
_start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7c00
        sti
        cld
        .byte   0xea                            # ljmp 0:main: CS=0 whatever the BIOS used
        .word   main, 0
main:
        mov     [drive], dl
        mov     si, offset s_start
        call    puts
        mov     si, offset dap
        mov     ah, 0x42
        mov     dl, [drive]
        int     0x13
        jnc     stage2
        mov     bl, ah
        mov     si, offset s_load_error
        call    puts
        mov     al, bl
        call    puthex8
        mov     si, offset s_load_fail
        call    puts
        mov     al, EXIT_FAIL
exit:
        out     DEBUG_EXIT, al
1:      cli
        hlt
        jmp     1b

# Sends AL to COM1 once the transmitter is empty.
putc:
        push    dx
        push    ax
        mov     dx, COM1 + 5
1:      in      al, dx
        test    al, 0x20
        jz      1b
        pop     ax
        mov     dx, COM1
        out     dx, al
        pop     dx
        ret

# Sends the NUL-terminated string at SI.
puts:
        lodsb
        test    al, al
        jz      1f
        call    putc
        jmp     puts
1:      ret

# Sends AL as two hex digits.
puthex8:
        push    ax
        shr     al, 4
        call    hexdigit
        pop     ax
hexdigit:
        and     al, 0x0f
        add     al, '0'
        cmp     al, '9'
        jbe     putc
        add     al, 'a' - '0' - 10
        jmp     putc

drive:  .byte   0x80
# The disk address packet of every call: stage 2 first, then reused by stage 2.
dap:    .byte   16, 0
dap_count:
        .word   STAGE2_BLOCKS
dap_buf:
        .word   STAGE2_ADDR, 0
dap_lba:
        .long   STAGE2_LBA, 0

s_start:
        .asciz  "{\"fw\":\"seabios\",\"ev\":\"start\"}\r\n"
s_load_error:
        .asciz  "{\"fw\":\"seabios\",\"ev\":\"error\",\"step\":\"load\",\"code\":\"0x"
s_load_fail:
        .asciz  "\"}\r\n{\"fw\":\"seabios\",\"result\":\"fail\",\"failed_step\":\"load\"}\r\n"

# The partition table (`.org` fails the build if stage 1 runs into it): one EFI system partition (type 0xef) for OVMF, LBA addressed
# (CHS fields at their "beyond CHS" maximum).
        .org    446
        .byte   0x00, 0xfe, 0xff, 0xff, 0xef, 0xfe, 0xff, 0xff
        .long   ESP_LBA, ESP_BLOCKS
        .fill   48, 1, 0
        .byte   0x55, 0xaa

# ---- stage 2, at STAGE2_ADDR --------------------------------------------------------

stage2:
        # The write generation: the TSC's low half with the top bit set, so that it is new
        # on every run and never IMAGE_GEN.
        rdtsc
        or      eax, 0x80000000
        mov     [write_gen], eax
        mov     bp, offset step_read
        call    run_step
        jc      failed
        mov     bp, offset step_write
        call    run_step
        jc      failed
        mov     bp, offset step_readback
        call    run_step
        jc      failed
        mov     si, offset s_pass
        call    puts
        call    put_counts
        mov     si, offset s_end
        call    puts
        mov     al, EXIT_PASS
        jmp     exit

# After any failure: read the first chunk of the pattern once more.
failed:
        mov     [failed_step], bp
        mov     bp, offset step_reread
        call    run_step
        mov     si, offset s_true
        jnc     1f
        mov     si, offset s_false
1:      push    si
        mov     si, offset s_fail
        call    puts
        mov     bp, [failed_step]
        mov     si, [bp + STEP_NAME]
        call    puts
        mov     si, offset s_quote
        call    puts
        call    put_counts
        mov     si, offset s_reread_ok
        call    puts
        pop     si
        call    puts
        mov     si, offset s_end
        call    puts
        mov     al, EXIT_FAIL
        jmp     exit

# ,"read_blocks":N,"written_blocks":N,"verified_blocks":N,"gen":"0x..."
put_counts:
        mov     si, offset s_read_blocks
        movzx   eax, word ptr [read_blocks]
        call    put_field_dec
        mov     si, offset s_written_blocks
        movzx   eax, word ptr [written_blocks]
        call    put_field_dec
        mov     si, offset s_verified_blocks
        movzx   eax, word ptr [verified_blocks]
        call    put_field_dec
        mov     si, offset s_gen
        mov     eax, [write_gen]
        jmp     put_field_hex32

# Runs the step described at BP over its whole range, one chunk per call. CF set on the
# first failed call or mismatch, after its JSON line.
        .set    STEP_NAME, 0                    # word: the step's name
        .set    STEP_FUNC, 2                    # byte: INT 13h function, 0x42 or 0x43
        .set    STEP_LBA, 4                     # dword: first LBA
        .set    STEP_BLOCKS, 8                  # word: blocks in all
        .set    STEP_COUNTER, 10                # word: address of the blocks-done counter
        .set    STEP_GEN, 12                    # word: address of the generation
run_step:
        mov     eax, [bp + STEP_LBA]
        mov     [cur_lba], eax
        mov     ax, [bp + STEP_BLOCKS]
        mov     [left], ax
next_chunk:
        cmp     word ptr [left], 0
        je      step_done
        call    chunk_regs
        cmp     byte ptr [bp + STEP_FUNC], 0x43
        je      1f
        call    clear_buf
        jmp     2f
1:      call    fill_buf
2:      mov     word ptr [dap_count], CHUNK_BLOCKS
        mov     word ptr [dap_buf], 0
        mov     word ptr [dap_buf + 2], BUF_SEG
        mov     eax, [cur_lba]
        mov     [dap_lba], eax
        mov     si, offset dap
        mov     ah, [bp + STEP_FUNC]
        xor     al, al                          # AH=43h: write without verify
        mov     dl, [drive]
        push    bp
        int     0x13
        pop     bp
        jc      io_error
        cmp     byte ptr [bp + STEP_FUNC], 0x43
        je      3f
        call    chunk_regs                      # the call took DL for the drive
        call    check_buf
        jc      step_failed
3:      mov     di, [bp + STEP_COUNTER]
        add     word ptr [di], CHUNK_BLOCKS
        add     dword ptr [cur_lba], CHUNK_BLOCKS
        sub     word ptr [left], CHUNK_BLOCKS
        jmp     next_chunk
step_done:
        clc
        ret

# EDX = the chunk's first LBA, EBX = the step's generation.
chunk_regs:
        mov     si, [bp + STEP_GEN]
        mov     ebx, [si]
        mov     edx, [cur_lba]
        ret

# {"fw":"seabios","ev":"error","step":S,"lba":N,"blocks":N,"code":"0xAH"}
io_error:
        mov     bl, ah
        mov     si, offset s_error
        call    put_head
        mov     si, offset s_lba
        mov     eax, [cur_lba]
        call    put_field_dec
        mov     si, offset s_blocks
        mov     eax, CHUNK_BLOCKS
        call    put_field_dec
        mov     si, offset s_code
        call    puts
        mov     al, bl
        call    puthex8
        mov     si, offset s_quote_end
        call    puts
step_failed:
        stc
        ret

# Prints {"fw":"seabios","ev": + the string at SI + ,"step":"NAME"
put_head:
        push    si
        mov     si, offset s_ev
        call    puts
        pop     si
        call    puts
        mov     si, offset s_step
        call    puts
        mov     si, [bp + STEP_NAME]
        call    puts
        mov     si, offset s_quote
        jmp     puts

# ES:DI walks the buffer; EDX is the LBA of the block at DI, EBX the generation.
clear_buf:
        push    es
        mov     ax, BUF_SEG
        mov     es, ax
        xor     di, di
        xor     eax, eax
        mov     cx, CHUNK_BLOCKS * 128
        rep     stosd
        pop     es
        ret

fill_buf:
        push    es
        mov     ax, BUF_SEG
        mov     es, ax
        xor     di, di
        mov     cx, CHUNK_BLOCKS * SLOTS
1:      mov     eax, TAG
        stosd
        mov     eax, edx
        stosd
        mov     eax, ebx
        stosd
        call    slot_index
        stosd
        test    di, 511
        jnz     2f
        inc     edx
2:      loop    1b
        pop     es
        ret

# EAX = the index in its block of the stamp that DI points into.
slot_index:
        movzx   eax, di
        shr     eax, 4
        and     eax, SLOTS - 1
        ret

check_buf:
        push    es
        mov     ax, BUF_SEG
        mov     es, ax
        xor     di, di
        mov     cx, CHUNK_BLOCKS * SLOTS
1:      cmp     dword ptr es:[di], TAG
        jne     mismatch
        cmp     es:[di + 4], edx
        jne     mismatch
        cmp     es:[di + 8], ebx
        jne     mismatch
        call    slot_index
        cmp     es:[di + 12], eax
        jne     mismatch
        add     di, 16
        test    di, 511
        jnz     2f
        inc     edx
2:      loop    1b
        pop     es
        clc
        ret

# {"fw":"seabios","ev":"mismatch","step":S,"lba":N,"slot":N,"want_gen":"0x..",
#  "found_tag":"0x..","found_lba":N,"found_gen":"0x..","found_slot":N}
mismatch:
        mov     si, offset s_mismatch
        call    put_head
        mov     si, offset s_lba
        mov     eax, edx
        call    put_field_dec
        mov     si, offset s_slot
        call    slot_index
        call    put_field_dec
        mov     si, offset s_want_gen
        mov     eax, ebx
        call    put_field_hex32
        mov     si, offset s_found_tag
        mov     eax, es:[di]
        call    put_field_hex32
        mov     si, offset s_found_lba
        mov     eax, es:[di + 4]
        call    put_field_dec
        mov     si, offset s_found_gen
        mov     eax, es:[di + 8]
        call    put_field_hex32
        mov     si, offset s_found_slot
        mov     eax, es:[di + 12]
        call    put_field_dec
        mov     si, offset s_end
        call    puts
        pop     es
        stc
        ret

# Sends the string at SI, then EAX in decimal.
put_field_dec:
        push    eax
        call    puts
        pop     eax
        push    ecx
        push    edx
        mov     ecx, 10
        xor     dx, dx
        push    dx                              # 0: end of the digits on the stack
1:      xor     edx, edx
        div     ecx
        add     dl, '0'
        push    dx
        test    eax, eax
        jnz     1b
2:      pop     ax
        test    al, al
        jz      3f
        call    putc
        jmp     2b
3:      pop     edx
        pop     ecx
        ret

# Sends the string at SI, then "0x%08x" of EAX with its quotes.
put_field_hex32:
        push    eax
        call    puts
        mov     si, offset s_hex
        call    puts
        pop     eax
        push    cx
        mov     cx, 4
1:      rol     eax, 8
        push    eax
        call    puthex8
        pop     eax
        loop    1b
        pop     cx
        mov     si, offset s_quote
        jmp     puts

# Step descriptors (see run_step).
step_read:
        .word   s_read
        .byte   0x42, 0
        .long   PATTERN_LBA
        .word   PATTERN_BLOCKS, read_blocks, image_gen
step_write:
        .word   s_write
        .byte   0x43, 0
        .long   WRITE_LBA
        .word   WRITE_BLOCKS, written_blocks, write_gen
step_readback:
        .word   s_readback
        .byte   0x42, 0
        .long   WRITE_LBA
        .word   WRITE_BLOCKS, verified_blocks, write_gen
step_reread:
        .word   s_reread
        .byte   0x42, 0
        .long   PATTERN_LBA
        .word   CHUNK_BLOCKS, reread_blocks, image_gen

image_gen:      .long   IMAGE_GEN
write_gen:      .long   0
cur_lba:        .long   0
left:           .word   0
failed_step:    .word   0
read_blocks:    .word   0
written_blocks: .word   0
verified_blocks:.word   0
reread_blocks:  .word   0

s_read:         .asciz  "read"
s_write:        .asciz  "write"
s_readback:     .asciz  "readback"
s_reread:       .asciz  "reread"
s_ev:           .asciz  "{\"fw\":\"seabios\",\"ev\":"
s_error:        .asciz  "\"error\""
s_mismatch:     .asciz  "\"mismatch\""
s_step:         .asciz  ",\"step\":\""
s_lba:          .asciz  ",\"lba\":"
s_blocks:       .asciz  ",\"blocks\":"
s_code:         .asciz  ",\"code\":\"0x"
s_slot:         .asciz  ",\"slot\":"
s_want_gen:     .asciz  ",\"want_gen\":"
s_found_tag:    .asciz  ",\"found_tag\":"
s_found_lba:    .asciz  ",\"found_lba\":"
s_found_gen:    .asciz  ",\"found_gen\":"
s_found_slot:   .asciz  ",\"found_slot\":"
s_read_blocks:  .asciz  ",\"read_blocks\":"
s_written_blocks: .asciz ",\"written_blocks\":"
s_verified_blocks: .asciz ",\"verified_blocks\":"
s_gen:          .asciz  ",\"gen\":"
s_reread_ok:    .asciz  ",\"reread_ok\":"
s_pass:         .asciz  "{\"fw\":\"seabios\",\"result\":\"pass\""
s_fail:         .asciz  "{\"fw\":\"seabios\",\"result\":\"fail\",\"failed_step\":\""
s_true:         .asciz  "true"
s_false:        .asciz  "false"
s_hex:          .asciz  "\"0x"
s_quote:        .asciz  "\""
s_quote_end:    .asciz  "\"}\r\n"
s_end:          .asciz  "}\r\n"

        .balign 512, 0                          # build.sh checks the size against STAGE2_BLOCKS
