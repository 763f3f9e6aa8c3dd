; vadd: c = a + b on two 8x320 fp32 tensors, one row (one 320-lane vector) per cycle.
;
; Layout (byte-planar): a fp32 element is 4 byte planes, one per MEM slice, so `a` lives in west slices 0..3,
; `b` in west slices 4..7 and the result `c` in east slices 0..3, each row at vector address 0..7.
;
; Dataflow, on eastward streams: each west slice k reads its byte plane of one row onto stream E<k>; VXM ALU 0
; (rank 0, one position east of west slice 0) adds the fp32 groups E0..E3 and E4..E7 and puts the sum on
; E8..E11; east slice j writes byte plane j from stream E<8+j>.
;
; Timing is static: a MEM read lands on its stream 2 cycles after issue and a value moves one slice per cycle, so
; west slice k issues its read 3 + k cycles before the add (cycle 10) for all eight byte planes to meet at ALU 0 in
; the same cycle. The add's result lands 2 cycles later and reaches east slice j after 4 + j more hops, when that
; slice issues its write. `repeat n=7 d=1` re-issues each instruction on the next 7 cycles at the next address.
;
; Run it:  openlpu run vadd.s      (the .check line compares c with a + b computed in NumPy)

.program vadd
.chip groqchip1
.tensor a fp32 8x320 @ w:0 addr=0 = random(1, -1.0, 1.0)
.tensor b fp32 8x320 @ w:4 addr=0 = random(2, -1.0, 1.0)
.tensor c fp32 8x320 @ e:0 addr=0
.check c == a + b

.queue mem.e.0
    nop n=16
    write addr=0 a=E8
    repeat n=7 d=1

.queue mem.e.1
    nop n=17
    write addr=0 a=E9
    repeat n=7 d=1

.queue mem.e.2
    nop n=18
    write addr=0 a=E10
    repeat n=7 d=1

.queue mem.e.3
    nop n=19
    write addr=0 a=E11
    repeat n=7 d=1

.queue mem.w.0
    nop n=7
    read addr=0 out=E0
    repeat n=7 d=1

.queue mem.w.1
    nop n=6
    read addr=0 out=E1
    repeat n=7 d=1

.queue mem.w.2
    nop n=5
    read addr=0 out=E2
    repeat n=7 d=1

.queue mem.w.3
    nop n=4
    read addr=0 out=E3
    repeat n=7 d=1

.queue mem.w.4
    nop n=3
    read addr=0 out=E4
    repeat n=7 d=1

.queue mem.w.5
    nop n=2
    read addr=0 out=E5
    repeat n=7 d=1

.queue mem.w.6
    nop n=1
    read addr=0 out=E6
    repeat n=7 d=1

.queue mem.w.7
    read addr=0 out=E7
    repeat n=7 d=1

.queue vxm.0
    nop n=10
    add a=E0 b=E4 out=E8 dtype=fp32
    repeat n=7 d=1
