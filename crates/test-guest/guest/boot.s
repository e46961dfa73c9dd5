/*
 * The test guest's CPL0 code and its static CPU tables (AT&T syntax, assembled by rustc's
 * `global_asm!` in boot.rs, which supplies the operands written in braces).
 *
 * Everything here runs at CPL0, where the project's KVM host *emulates* every instruction
 * (~2 million/s) and knows only a subset of them (see docs: kvm-host.md). Rules:
 *   - only integer/string ops, push/pop/call/jmp/iretq, lock ops, rd/wrmsr, cpuid,
 *     lgdt/lidt/ltr, mov crN, in/out, cli/sti/hlt, invlpg; and x87 on request (svc_x87);
 *   - no loops on any path that completes normally: every table below is emitted
 *     ready-made by the assembler (.rept), the ELF loader puts it in place, and whatever
 *     must be computed at run time (AP stacks, BSS, >4 GiB page tables) is computed by Rust
 *     code at CPL3, which runs natively.
 *
 * The section .boot is linked at exactly LOAD_ADDR (link.ld asserts it), so the assembler
 * can compute absolute addresses as LOAD_ADDR + (label - boot_start) and split them into
 * the bit fields of IDT gates and TSS descriptors.
 */

.set BOOT_BASE, {load_addr}
.set KERNEL_CS, 0x08
.set USER_DS, 0x18 | 3
.set USER_CS, 0x20 | 3
.set TSS0_SEL, 0x28
.set MAX_CPUS, {max_cpus}
.set TSS_STRIDE, 128
.set IOPB_SIZE, 8192
/* Vectors whose exceptions push an error code: 8, 10-14, 17, 21, 29, 30. */
.set ERRCODE_MASK, 0x60227d00
/* CR4: PAE | OSFXSR | OSXMMEXCPT. CR0: PE | MP | ET | NE | WP | PG (EM and TS clear). */
.set CR4_VALUE, 0x620
.set CR0_VALUE, 0x80010033
.set MSR_EFER, 0xc0000080
.set EFER_LME, 0x100
.set LAPIC_EOI, 0xfee000b0

.section .boot, "awx", @progbits

/* ---- page tables: identity map of 0-4 GiB with 2 MiB pages, present | rw | user ---- */
.balign 4096
boot_start:
.globl vireo_pml4
vireo_pml4:
    .quad vireo_pdpt + 0x7
    .skip 4096 - 8
.globl vireo_pdpt
vireo_pdpt:
    .quad pd_low + 0x0007
    .quad pd_low + 0x1007
    .quad pd_low + 0x2007
    .quad pd_low + 0x3007
    .skip 4096 - 32
pd_low:
.set i, 0
.rept 2048
    .quad (i << 21) | 0x87
    .set i, i + 1
.endr

/*
 * ---- IDT: 0-31 exception stubs, except vector 3 (#BP): kernel services, DPL3, entered with
 * `int3`; 0x80 (DPL3) also enters the services, the rest are interrupt stubs.
 *
 * Why int3: on the project's KVM host (kvm_pvm) `int $n` from CPL3 raises #UD for every n
 * but 3 (KVM's instruction emulator does not implement protected-mode INT n), while int3
 * is delivered through this IDT like on any x86. Vector 0x80 works on hardware KVM only.
 */
.macro GATE target, type
    .word (BOOT_BASE + (\target - boot_start)) & 0xffff
    .word KERNEL_CS
    .word \type
    .word ((BOOT_BASE + (\target - boot_start)) >> 16) & 0xffff
    .long 0
    .long 0
.endm

.balign 4096
idt:
.set i, 0
.rept 256
.if i == 3
    GATE svc_entry, 0xee00
.elseif i < 32
    GATE exc_stubs+(16*i), 0x8e00
.elseif i == 0x80
    GATE svc_entry, 0xee00
.else
    GATE irq_stubs+(16*(i-32)), 0x8e00
.endif
.set i, i + 1
.endr

/*
 * ---- TSSs: one per CPU, 128 bytes apart, all sharing one all-zero I/O permission bitmap
 * (every port allowed at CPL3) that follows them; each TSS's I/O map base points there.
 * RSP0 is filled at run time (the BSP's below, the APs' by Rust before they start).
 */
.balign 4096
.globl vireo_tss_area
vireo_tss_area:
.set i, 0
.rept MAX_CPUS
    .long 0                                 /* reserved */
    .quad 0, 0, 0                           /* rsp0, rsp1, rsp2 */
    .quad 0                                 /* reserved */
    .quad 0, 0, 0, 0, 0, 0, 0               /* ist1-7 */
    .quad 0                                 /* reserved */
    .word 0                                 /* reserved */
    .word MAX_CPUS * TSS_STRIDE - i * TSS_STRIDE   /* I/O map base */
    .skip TSS_STRIDE - 104
.set i, i + 1
.endr
io_bitmap:
    .skip IOPB_SIZE
    .byte 0xff                              /* the bitmap's terminating byte */

/* ---- GDT: null, kernel code/data, user data/code (sysret order), MAX_CPUS TSS slots ---- */
.balign 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff                /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff                /* 0x10 kernel data */
    .quad 0x00cff3000000ffff                /* 0x18 user data (selector 0x1b) */
    .quad 0x00affb000000ffff                /* 0x20 user code, 64-bit (selector 0x23) */
.globl vireo_gdt_tss
vireo_gdt_tss:                              /* 0x28 + 16 * cpu: 64-bit TSS descriptors */
.set i, 0
.rept MAX_CPUS
    .word (MAX_CPUS * TSS_STRIDE + IOPB_SIZE - i * TSS_STRIDE) & 0xffff   /* limit */
    .word (BOOT_BASE + (vireo_tss_area - boot_start) + i * TSS_STRIDE) & 0xffff
    .byte ((BOOT_BASE + (vireo_tss_area - boot_start) + i * TSS_STRIDE) >> 16) & 0xff
    .byte 0x89                              /* present, DPL0, available 64-bit TSS */
    .byte 0
    .byte ((BOOT_BASE + (vireo_tss_area - boot_start) + i * TSS_STRIDE) >> 24) & 0xff
    .long 0
    .long 0
.set i, i + 1
.endr
gdt_end:

.balign 16
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
.balign 16
idtr:
    .word 256 * 16 - 1
    .quad idt
.balign 16
zero_idtr:
    .word 0
    .quad 0

/* Per-CPU start-up data the BSP fills (at CPL3) before starting APs: kernel and user stack tops. */
.balign 64
.globl vireo_percpu
vireo_percpu:
    .skip MAX_CPUS * 16
/* Next AP index (APs take 1, 2, ... in arrival order) and how many slots the BSP prepared. */
.balign 4
.globl vireo_ap_next
vireo_ap_next:
    .long 1
.globl vireo_ap_limit
vireo_ap_limit:
    .long 0
/* TSC at the PVH entry. */
.balign 8
.globl vireo_boot_tsc
vireo_boot_tsc:
    .quad 0
/* Interrupts taken per vector (all CPUs), counted by the interrupt stubs. */
.balign 64
.globl vireo_irq_counts
vireo_irq_counts:
    .skip 256 * 4

/* Strings of the exception line that follow the shared prefix. */
str_error:
    .ascii " error=0x"
str_rip:
    .ascii " rip=0x"
str_cr2:
    .ascii " cr2=0x"

/* Kernel service table: index = rax at `int3` (see svc.rs for the ABI). */
.balign 8
svc_table:
    .quad svc_cpuid                         /* 0 */
    .quad svc_rdmsr                         /* 1 */
    .quad svc_wrmsr                         /* 2 */
    .quad svc_read_cr0                      /* 3 */
    .quad svc_read_cr3                      /* 4 */
    .quad svc_read_cr4                      /* 5 */
    .quad svc_wait_irq                      /* 6 */
    .quad svc_halt                          /* 7 */
    .quad svc_x87                           /* 8 */
    .quad svc_invlpg                        /* 9 */
    .quad svc_irq_on                        /* 10 */
    .quad svc_irq_off                       /* 11 */
    .quad svc_triple_fault                  /* 12 */
svc_table_end:

/* ---- BSP entry: PVH, 32-bit protected mode, paging off, EBX = struct hvm_start_info ---- */
.code32
.globl pvh_entry
pvh_entry:
    mov %ebx, %edi
    rdtsc                                   /* for the boottime scenario */
    mov %eax, vireo_boot_tsc
    mov %edx, vireo_boot_tsc+4
    lgdt gdtr
    mov $CR4_VALUE, %eax
    mov %eax, %cr4
    mov $vireo_pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    mov $EFER_LME, %eax
    xor %edx, %edx
    wrmsr
    mov $CR0_VALUE, %eax
    mov %eax, %cr0
    ljmp $KERNEL_CS, $bsp_entry64

.code64
bsp_entry64:
    lidt idtr(%rip)
    lea kstack0_top(%rip), %rsp
    mov %rsp, vireo_tss_area+4(%rip)        /* TSS0.RSP0 */
    movb $0x89, vireo_gdt_tss+5(%rip)       /* not busy, in case the image was not reloaded */
    mov $TSS0_SEL, %eax
    ltr %ax
    mov %edi, %edi                          /* start_info, zero-extended: user_entry's arg */
    pushq $USER_DS
    pushq $ustack0_top
    pushq $0x2                              /* RFLAGS: IF=0, IOPL=0 */
    pushq $USER_CS
    pushq $user_entry
    iretq

/* ---- AP entry, 64-bit (from the real-mode trampoline below) ---- */
ap_entry64:
    lidt idtr(%rip)
    mov $1, %eax
    lock xadd %eax, vireo_ap_next(%rip)
    cmp vireo_ap_limit(%rip), %eax
    jae ap_park
    mov %eax, %edi                          /* ap_main's argument: this CPU's index */
    shl $4, %eax
    mov vireo_percpu(%rax), %rsp            /* kernel stack */
    mov vireo_percpu+8(%rax), %rcx          /* user stack */
    add $TSS0_SEL, %eax
    ltr %ax
    pushq $USER_DS
    push %rcx
    pushq $0x2
    pushq $USER_CS
    pushq $ap_user_entry
    iretq
ap_park:                                    /* a CPU the BSP did not prepare for: stay halted */
    cli
    hlt
    jmp ap_park

/* ---- kernel services: int3 (or int $0x80), rax = function (see svc.rs) ---- */
svc_entry:
    cmp $(svc_table_end - svc_table) / 8, %rax
    jae 1f
    jmp *svc_table(, %rax, 8)
1:  mov $-1, %rax
    iretq

svc_cpuid:                                  /* rdi = leaf, rsi = subleaf -> eax, ebx in rdi, ecx, edx */
    push %rbx
    mov %edi, %eax
    mov %esi, %ecx
    cpuid
    mov %ebx, %edi
    pop %rbx
    iretq
svc_rdmsr:                                  /* rdi = msr -> rax = value */
    mov %edi, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    iretq
svc_wrmsr:                                  /* rdi = msr, rsi = value */
    mov %edi, %ecx
    mov %esi, %eax
    mov %rsi, %rdx
    shr $32, %rdx
    wrmsr
    iretq
svc_read_cr0:
    mov %cr0, %rax
    iretq
svc_read_cr3:
    mov %cr3, %rax
    iretq
svc_read_cr4:
    mov %cr4, %rax
    iretq
svc_wait_irq:                               /* wait for one interrupt (sti's shadow covers hlt) */
    sti
    hlt
    cli
    iretq
svc_halt:                                   /* halt with interrupts off (until NMI/INIT) */
    hlt
    iretq
svc_x87:                                    /* x87 the host cannot emulate at CPL0: KVM's */
    fninit                                  /* emulator knows fninit, but not fld1 */
    fld1
    fninit
    iretq
svc_invlpg:                                 /* rdi = linear address */
    invlpg (%rdi)
    iretq
svc_irq_on:                                 /* let interrupts reach the caller at CPL3 */
    orq $0x200, 16(%rsp)
    iretq
svc_irq_off:
    andq $~0x200, 16(%rsp)
    iretq
svc_triple_fault:                           /* an empty IDT turns the next event into a shutdown */
    lidt zero_idtr(%rip)
    ud2

/* ---- interrupts: count per vector, EOI the local APIC ---- */
.balign 16
irq_stubs:
.set i, 32
.rept 224
.balign 16
    pushq $i
    jmp irq_common
.set i, i + 1
.endr

irq_common:
    push %rax
    mov 8(%rsp), %eax
    lock incl vireo_irq_counts(, %rax, 4)
    mov $LAPIC_EOI, %eax
    movl $0, (%rax)
    pop %rax
    add $8, %rsp
    iretq

/* ---- exceptions: print one line on COM1, exit with STATUS_EXCEPTION ---- */
.balign 16
exc_stubs:
.set i, 0
.rept 32
.balign 16
.if ((ERRCODE_MASK >> i) & 1) == 0
    pushq $0
.endif
    pushq $i
    jmp exc_common
.set i, i + 1
.endr

/* Straight-line printing (no loops): .rept unrolls at assembly time. */
.macro PUTS str, len
    lea \str(%rip), %rsi
    .rept \len
    lodsb
    out %al, %dx
    .endr
.endm
.macro PUTHEX64                             /* %rbx as 16 hex digits */
    .rept 16
    rol $4, %rbx
    mov %bl, %al
    and $0xf, %al
    add $0x30, %al
    cmp $0x39, %al
    jbe 1f
    add $0x27, %al
1:  out %al, %dx
    .endr
.endm

exc_common:                                 /* stack: vector, error code, rip, cs, rflags, ... */
    cld                                     /* lodsb below; the fault may have come with DF=1 */
    mov ${com1}, %dx
    PUTS {exc_prefix}, {exc_prefix_len}
    mov (%rsp), %eax                        /* vector, decimal */
    mov $10, %cl
    div %cl
    test %al, %al
    jz 1f
    add $0x30, %al
    out %al, %dx
1:  mov %ah, %al
    add $0x30, %al
    out %al, %dx
    PUTS str_error, 9
    mov 8(%rsp), %rbx
    PUTHEX64
    PUTS str_rip, 7
    mov 16(%rsp), %rbx
    PUTHEX64
    PUTS str_cr2, 7
    mov %cr2, %rbx
    PUTHEX64
    mov $0x0a, %al
    out %al, %dx
    mov ${status_exception}, %eax
    mov ${exit_port}, %dx
    out %eax, %dx
2:  hlt                                     /* no exit device: stay halted (IF is 0) */
    jmp 2b

/*
 * ---- AP trampoline: copied by the BSP to a page below 1 MiB, entered by SIPI in real mode
 * (CS = page >> 4, IP = 0). Goes straight to long mode: PAE + LME + PE|PG, then a far jump.
 */
.balign 16
.globl vireo_ap_trampoline
vireo_ap_trampoline:
.code16
    lgdtl %cs:(ap_tramp_gdtr - vireo_ap_trampoline)
    mov $CR4_VALUE, %eax
    mov %eax, %cr4
    mov $vireo_pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    mov $EFER_LME, %eax
    xor %edx, %edx
    wrmsr
    mov $CR0_VALUE, %eax
    mov %eax, %cr0
    ljmpl $KERNEL_CS, $ap_entry64
.balign 8
ap_tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
.globl vireo_ap_trampoline_end
vireo_ap_trampoline_end:
.code64

/* ---- the PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY ---- */
.section .note.xen, "a", @note
.balign 4
    .long 4                                 /* namesz */
    .long 4                                 /* descsz */
    .long 18                                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_entry

/* ---- CPL3 entry points (native code from here on) ---- */
.text
user_entry:                                 /* rdi = start_info */
    mov %rdi, %r12
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    mov %r12, %rdi
    call {bsp_main}
    ud2
ap_user_entry:                              /* rdi = cpu index */
    call {ap_main}
    ud2

/* ---- the BSP's stacks (not zeroed, not in the file) ---- */
.section .stacks, "aw", @nobits
.balign 4096
kstack0:
    .skip 16384
kstack0_top:
    .skip 262144
ustack0_top:

.text
