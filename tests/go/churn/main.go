// Command churn is a short-lived, self-checking allocation workload, for soak tests in which
// many such processes start and exit while memtrace (the agent) traces them: it prints
// "READY <pid>", allocates for D on the main goroutine and on N short-lived goroutines, then
// checks what it computed and the runtime's heap accounting, and exits.
//
// Usage:
//
//	churn [-duration D] [-goroutines N]   (defaults: 300ms and 4)
//
// Output on stdout:
//
//	READY <pid>                      once, before the first allocation
//	OK checksum=<n> mallocs=<n>      at the end, exit code 0
//	FAIL <reason>                    instead of OK when a check fails, exit code 3
//
// Work comes in rounds (site round): 8 small structs with a pointer (48 bytes) in a map of 8,
// a []uint64 grown by append from 0 to 16 elements, and every 8th round a 64 KiB buffer.
// Nothing outlives its round except the last buffer. The main goroutine runs rounds for D,
// each of the N goroutines for D/2. Round r of a worker stores the values 8r+1..8r+8 in its
// structs and reads them back through the map, so a worker of k rounds sums 1..8k; checksum
// is the total over all workers and must equal the sum of 8k(8k+1)/2. At the end the program
// forces a GC and checks runtime.MemStats: NumGC >= 1, Mallocs > Frees, Mallocs - Frees ==
// HeapObjects, and Mallocs >= the 8 structs per round it knows it allocated.
//
// It does not import runtime/pprof, so, as in most production binaries, the linker leaves
// the heap profiler off (MemProfileRate 0) until something like the agent turns it on.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

type item struct {
	value uint64
	next  *item
	pad   [4]uint64
}

// lastBuffer keeps one 64 KiB buffer reachable, so the buffers cannot be optimized away.
var lastBuffer []byte

// round allocates one round's objects and returns the sum of the values it read back.
//
//go:noinline
func round(r uint64) uint64 {
	items := make(map[uint64]*item, 8) // SITE:round
	var prev *item
	for i := uint64(1); i <= 8; i++ {
		it := &item{value: 8*r + i, next: prev}
		items[i] = it
		prev = it
	}
	var values []uint64
	for i := uint64(1); i <= 16; i++ {
		values = append(values, i)
	}
	if r%8 == 0 {
		buf := make([]byte, 64<<10)
		buf[r%uint64(len(buf))] = byte(r)
		lastBuffer = buf
	}
	var sum uint64
	for i := uint64(1); i <= 8; i++ {
		sum += items[i].value
	}
	if values[15] != 16 || prev.next.value != 8*r+7 {
		return 0 // never: makes the checksum fail
	}
	return sum
}

// work runs rounds until the deadline; it returns the number of rounds and their checksum.
func work(deadline time.Time) (rounds, sum uint64) {
	for rounds == 0 || time.Now().Before(deadline) {
		sum += round(rounds)
		rounds++
	}
	return rounds, sum
}

func fail(format string, args ...any) {
	fmt.Printf("FAIL "+format+"\n", args...)
	os.Exit(3)
}

func main() {
	duration := flag.Duration("duration", 300*time.Millisecond, "how long to allocate")
	goroutines := flag.Int("goroutines", 4, "how many short-lived goroutines also allocate")
	flag.Parse()
	if flag.NArg() != 0 || *duration < 0 || *goroutines < 0 {
		fmt.Fprintln(os.Stderr, "usage: churn [-duration D] [-goroutines N]")
		os.Exit(2)
	}

	// os.Stdout is unbuffered: the line is written before the first allocation.
	fmt.Printf("READY %d\n", os.Getpid())
	start := time.Now()
	rounds := make([]uint64, *goroutines+1)
	sums := make([]uint64, *goroutines+1)
	var wg sync.WaitGroup
	for g := 1; g <= *goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rounds[g], sums[g] = work(start.Add(*duration / 2))
		}(g)
	}
	rounds[0], sums[0] = work(start.Add(*duration))
	wg.Wait()

	var checksum, expected, totalRounds uint64
	for g := range rounds {
		n := 8 * rounds[g]
		checksum += sums[g]
		expected += n * (n + 1) / 2
		totalRounds += rounds[g]
	}
	if checksum != expected {
		fail("checksum=%d expected=%d rounds=%v", checksum, expected, rounds)
	}

	runtime.GC()
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	switch {
	case stats.NumGC < 1:
		fail("num_gc=%d after runtime.GC()", stats.NumGC)
	case stats.Mallocs <= stats.Frees:
		fail("mallocs=%d frees=%d", stats.Mallocs, stats.Frees)
	case stats.Mallocs-stats.Frees != stats.HeapObjects:
		fail("mallocs=%d - frees=%d != heap_objects=%d", stats.Mallocs, stats.Frees, stats.HeapObjects)
	case stats.Mallocs < 8*totalRounds:
		fail("mallocs=%d < %d structs allocated in %d rounds", stats.Mallocs, 8*totalRounds, totalRounds)
	}
	runtime.KeepAlive(lastBuffer)
	fmt.Printf("OK checksum=%d mallocs=%d\n", checksum, stats.Mallocs)
}
