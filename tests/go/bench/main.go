// Command bench measures the cost of the smallest common allocation: G goroutines each
// allocate N/G 32-byte structs with a pointer (new(node), escaping to a global).
//
// Usage:
//
//	bench [N [G]]   (defaults: N = 2000000, G = 2)
//
// Output on stdout:
//
//	ALLOCS <n>          the allocations made: N rounded down to a multiple of G
//	ELAPSED_NS <ns>     wall time of the allocation loops only, from starting the goroutines
//	                    to the last one finishing (so process start and tracer attach are
//	                    excluded)
//	CPU_NS <ns>         the process's user+system CPU time over the same span (probes run in
//	                    the program's threads, so their cost is included; a tracer's own
//	                    process is not)
//
// With the environment variable BENCH_MEMPROFILERATE=R it sets runtime.MemProfileRate to R
// first: the cost of the Go runtime's own heap profiler, without any tracer.
//
// It exits 0, or 1 if the runtime counted fewer heap allocations than ALLOCS.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// node is 32 bytes with a pointer: a small "scan" allocation.
type node struct {
	next    *node
	a, b, c int64
}

// paddedSink gives each goroutine its own cache line to store its latest node in.
type paddedSink struct {
	latest *node
	_      [56]byte
}

// sinks is global, so every node escapes to the heap.
var sinks []paddedSink

//go:noinline
func allocate(sink *paddedSink, count int) {
	for i := 0; i < count; i++ {
		n := new(node) // SITE:node
		n.a = int64(i)
		sink.latest = n
	}
}

func positiveArg(index int, fallback int) int {
	if len(os.Args) <= index {
		return fallback
	}
	n, err := strconv.Atoi(os.Args[index])
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "bench: argument %d must be a positive integer, not %q\nusage: bench [N [G]]\n", index, os.Args[index])
		os.Exit(2)
	}
	return n
}

func main() {
	if len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: bench [N [G]]")
		os.Exit(2)
	}
	if rate := os.Getenv("BENCH_MEMPROFILERATE"); rate != "" {
		r, err := strconv.Atoi(rate)
		if err != nil || r < 0 {
			fmt.Fprintf(os.Stderr, "bench: BENCH_MEMPROFILERATE must be a number of bytes, not %q\n", rate)
			os.Exit(2)
		}
		runtime.MemProfileRate = r
	}
	total := positiveArg(1, 2000000)
	goroutines := positiveArg(2, 2)
	perGoroutine := total / goroutines
	sinks = make([]paddedSink, goroutines)

	var wg sync.WaitGroup
	cpuBefore := processCPU()
	start := time.Now()
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(sink *paddedSink) {
			defer wg.Done()
			allocate(sink, perGoroutine)
		}(&sinks[g])
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpuBefore

	// Guard against the compiler keeping the nodes on the stack.
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	if stats.Mallocs < uint64(perGoroutine*goroutines) {
		fmt.Fprintf(os.Stderr, "bench: only %d heap allocations, expected at least %d\n", stats.Mallocs, perGoroutine*goroutines)
		os.Exit(1)
	}
	fmt.Printf("ALLOCS %d\nELAPSED_NS %d\nCPU_NS %d\n", perGoroutine*goroutines, elapsed.Nanoseconds(), cpu.Nanoseconds())
}

// processCPU is the user and system CPU time of this process so far (uprobes run in the
// context of the thread that hits them, so their cost is in here too).
func processCPU() time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}
