//go:build go1.24

// Command weakdeath is memtrace's death-timing oracle: it allocates objects through one marked
// site, keeps a weak pointer (package weak) to each, then frees them a few at a time with
// runtime.GC() and reports, per object, the GC cycle after which its weak pointer was nil.
// runtime.GC() returns only after the cycle's sweep has finished, and the sweep clears an
// object's weak handle and releases its heap-profile record (runtime.freeSpecial) in the same
// pass, so an object reported dead at cycle n had its sampled-allocation record freed by the
// sweep of cycle n.
//
// It needs Go 1.24 or later (package weak); built with an older Go, it only prints an error
// and exits 2 (see old_go.go), so that every Go version can still build it.
//
// Usage:
//
//	weakdeath [-objects N] [-size S] [-per-round K]
//
//	-objects N     objects to allocate (default 64)
//	-size S        bytes per object, a pointer-free []byte (default 4096). It does not set
//	               runtime.MemProfileRate: run it with a sampling rate of 1 (memtrace
//	               --sample-rate 1) to have every object sampled.
//	-per-round K   objects released per round (default 8)
//
// It sleeps 1 s first, so that a tracer which launched it has set the sampling rate in the
// runtime before the first allocation. Output on stdout:
//
//	START_NUMGC <n>               runtime.MemStats.NumGC right before the first allocation
//	OBJ <index> <address> <size>  per object, index 0..N-1, after all are allocated: the
//	                              address of its first byte as 0x<hex> and its size S
//	DEAD <index> <numgc>          per object, in index order within a round: its weak pointer
//	                              became nil during the runtime.GC() of this round, after
//	                              which runtime.MemStats.NumGC was <numgc>
//	DONE                          once every object is dead; exit code 0
//
// Rounds: let R = ceil(N/K) and order the indices by i mod R, then by i (for N=64, K=8:
// 0 8 16 .. 56, 1 9 .. 57, ..); round r drops the strong references of the next K indices in
// that order, calls runtime.GC(), reads NumGC and prints the DEAD lines. With the defaults,
// round r releases the objects with i mod 8 == r, so each round frees objects spread over
// many spans. Each round's GC frees exactly the objects it dropped; if an object dies before
// its round, or some survive two extra rounds after the last drop, it reports the error on
// stderr and exits 1.
//
// Besides the marked site, each weak.Make allocates an 8-byte weak handle in the runtime (at
// the weak.Make line), which lives until the end.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"
	"weak"
)

// extraRounds is how many more GCs may pass after the last drop before giving up.
const extraRounds = 2

//go:noinline
func allocate(size int) []byte {
	b := make([]byte, size) // SITE:weakobj
	b[size-1] = 1
	return b
}

func main() {
	n := flag.Int("objects", 64, "objects to allocate")
	size := flag.Int("size", 4096, "bytes per object")
	perRound := flag.Int("per-round", 8, "objects released per round")
	flag.Parse()
	if flag.NArg() != 0 || *n < 1 || *size < 1 || *perRound < 1 {
		fmt.Fprintln(os.Stderr, "usage: weakdeath [-objects N] [-size S] [-per-round K]")
		os.Exit(2)
	}

	// The release order: indices by i mod rounds, then by i.
	rounds := (*n + *perRound - 1) / *perRound
	order := make([]int, 0, *n)
	for r := 0; r < rounds; r++ {
		for i := r; i < *n; i += rounds {
			order = append(order, i)
		}
	}
	strong := make([][]byte, *n)
	weakRefs := make([]weak.Pointer[byte], *n)
	dropped := make([]bool, *n)
	dead := make([]bool, *n)

	time.Sleep(time.Second)

	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	fmt.Printf("START_NUMGC %d\n", stats.NumGC)
	for i := range strong {
		b := allocate(*size)
		strong[i] = b
		weakRefs[i] = weak.Make(&b[0])
	}
	for i, b := range strong {
		fmt.Printf("OBJ %d 0x%x %d\n", i, uintptr(unsafe.Pointer(&b[0])), len(b))
	}

	remaining := *n
	for round := 0; remaining > 0; round++ {
		if round >= rounds+extraRounds {
			fmt.Fprintf(os.Stderr, "weakdeath: %d objects still alive %d GCs after the last release\n", remaining, extraRounds)
			os.Exit(1)
		}
		if first := round * *perRound; first < *n {
			for _, i := range order[first:min(first+*perRound, *n)] {
				strong[i] = nil
				dropped[i] = true
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&stats)
		for i := range weakRefs {
			if dead[i] || weakRefs[i].Value() != nil {
				continue
			}
			if !dropped[i] {
				fmt.Fprintf(os.Stderr, "weakdeath: object %d died while still referenced\n", i)
				os.Exit(1)
			}
			dead[i] = true
			remaining--
			fmt.Printf("DEAD %d %d\n", i, stats.NumGC)
		}
	}
	fmt.Println("DONE")
}
