/*
 * The Bochs sandbox's boot loader: the BIOS boots it from the first
 * sector of a raw disk, it copies the kernel and the initramfs from the
 * disk to their places in memory, and it enters Linux at its PVH entry
 * (XEN_ELFNOTE_PHYS32_ENTRY) in 32-bit protected mode with paging off,
 * %ebx pointing at a struct hvm_start_info (xen/interface/hvm/start_info.h).
 *
 * Why: the Debian image's bzImage decompresses about 66 MB of XZ in its
 * own stub first, which takes 40 s under Bochs; loaded this way the kernel
 * needs no decompression (see bochs.rs).
 *
 * Layout of the first 16 sectors (0x7c00-0x9bff once loaded):
 *   0x0000  this code; the BIOS loads sector 0, which loads sectors 1-15
 *   0x1000  the table pvh.rs writes (TABLE below):
 *           +0x00 "PVHL", +0x04 entry (physical, 32-bit), +0x08 loads,
 *           +0x10 loads x {u32 first sector, u32 sectors, u32 destination,
 *                          u32 0}, at most 15
 *           +0x100 struct hvm_start_info (its memmap_entries filled here)
 *           +0x180 struct hvm_modlist_entry (the initramfs)
 *           +0x200 the kernel command line
 *           +0x400 the memory map, from int 15h E820, at most 32 entries
 *
 * Assembled by xtask with `as --32` and linked at 0x7c00 as a flat binary.
 */
        .code16
        .text
        .globl _start
_start:
        cli
        xorw %ax, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw $0x7c00, %sp
        ljmp $0, $1f
1:      sti
        cld
        movb %dl, drive
        /* Sectors 1-15: the rest of this code and the table. */
        movw $15, dap+2
        movw $0x7e00, dap+4
        movw $0, dap+6
        movl $1, dap+8
        movl $0, dap+12
        movw $dap, %si
        movb $0x42, %ah
        int $0x13
        jc fail
        jmp stage2

/* Any failure: '!' on COM1 (the serial log shows it), then stop. */
fail:   movb $'!', %al
        movw $0x3f8, %dx
        outb %al, %dx
2:      hlt
        jmp 2b

        .p2align 2
/* int 13h AH=42h disk address packet. */
dap:    .byte 16, 0
        .word 0, 0, 0
        .long 0, 0
drive:  .byte 0

        .org 510
        .word 0xaa55

stage2:
        movw $TABLE+16, %bx
        movl TABLE+8, %ecx
next_load:
        testl %ecx, %ecx
        jz loaded
        pushl %ecx
        movl 0(%bx), %eax
        movl %eax, lba
        movl 4(%bx), %eax
        movl %eax, left
        movl 8(%bx), %eax
        movl %eax, dest
chunk:
        /* Up to CHUNK sectors from the disk into the buffer at 0x10000... */
        movl left, %eax
        testl %eax, %eax
        jz load_done
        cmpl $CHUNK, %eax
        jbe 1f
        movl $CHUNK, %eax
1:      movw %ax, count
        movw %ax, dap+2
        movw $0, dap+4
        movw $0x1000, dap+6
        movl lba, %eax
        movl %eax, dap+8
        movl $0, dap+12
        movw $dap, %si
        movb drive, %dl
        movb $0x42, %ah
        pushw %bx
        int $0x13
        popw %bx
        jc fail
        /* ...then to the destination with int 15h AH=87h (block move). */
        movl dest, %eax
        movw %ax, gdt87+0x18+2
        shrl $16, %eax
        movb %al, gdt87+0x18+4
        movb %ah, gdt87+0x18+7
        movw count, %cx
        shlw $8, %cx
        movw $gdt87, %si
        pushw %bx
        movb $0x87, %ah
        int $0x15
        popw %bx
        jc fail
        xorl %eax, %eax
        movw count, %ax
        addl %eax, lba
        subl %eax, left
        shll $9, %eax
        addl %eax, dest
        jmp chunk
load_done:
        popl %ecx
        addw $16, %bx
        decl %ecx
        jmp next_load

loaded:
        /* The BIOS memory map, straight into hvm_memmap_table_entry's
         * (E820 entries of 24 bytes; their last field becomes reserved=0). */
        xorw %ax, %ax
        movw %ax, %es
        movw $MEMMAP, %di
        xorl %ebx, %ebx
        xorw %bp, %bp
e820:
        movl $1, %es:20(%di)
        movl $0xe820, %eax
        movl $24, %ecx
        movl $0x534d4150, %edx
        int $0x15
        jc e820_done
        cmpl $0x534d4150, %eax
        jne e820_done
        movl $0, %es:20(%di)
        addw $24, %di
        incw %bp
        cmpw $32, %bp
        jae e820_done
        testl %ebx, %ebx
        jnz e820
e820_done:
        testw %bp, %bp
        jz fail
        movw %bp, START_INFO+48
        /* A20 on, flat 32-bit segments, interrupts off: PVH's entry state. */
        cli
        inb $0x92, %al
        orb $2, %al
        andb $0xfe, %al
        outb %al, $0x92
        lgdtl gdtr
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x08, $pm32

        .code32
pm32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw %ax, %fs
        movw %ax, %gs
        movl $START_INFO, %ebx
        movl TABLE+4, %eax
        jmp *%eax

        .p2align 3
gdt:    .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08: code, flat */
        .quad 0x00cf92000000ffff        /* 0x10: data, flat */
gdtr:   .word 23
        .long gdt

        .p2align 3
/* int 15h AH=87h: null, GDT, source (the buffer at 0x10000), destination
 * (its base set per chunk), BIOS CS, BIOS SS. */
gdt87:  .quad 0
        .quad 0
        .word 0xffff, 0x0000
        .byte 0x01, 0x93, 0x00, 0x00
        .word 0xffff, 0x0000
        .byte 0x00, 0x93, 0x00, 0x00
        .quad 0
        .quad 0

        .p2align 2
lba:    .long 0
left:   .long 0
dest:   .long 0
count:  .word 0

        .set CHUNK, 64
        .set TABLE, 0x7c00 + 0x1000
        .set START_INFO, TABLE + 0x100
        .set MEMMAP, TABLE + 0x400
        .org 0x1000
