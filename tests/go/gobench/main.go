// Command gobench is a goroutine-heavy workload for benchmarks: it serves N requests, each on a
// goroutine of its own that does W rounds of hashing over a 256-byte buffer and reports to the
// dispatcher over a channel, with at most C requests in flight, the way a server spawns a
// goroutine per request.
//
// Usage:
//
//	gobench [N [W [C]]]   (defaults: N = 200000, W = 16, C = 64)
//
// Output on stdout:
//
//	GOROUTINES <n>      goroutines created for requests (N)
//	ELAPSED_NS <ns>     wall time from the first request to the last one finishing
//	CPU_NS <ns>         the process's user+system CPU time over the same span
//	RATE <n>            goroutines created and finished per second of ELAPSED_NS
//
// It exits 0, or 1 if a request was lost.
package main

import (
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"syscall"
	"time"
)

func arg(index int, fallback int) int {
	if len(os.Args) <= index {
		return fallback
	}
	n, err := strconv.Atoi(os.Args[index])
	if err != nil || n <= 0 {
		fmt.Fprintf(os.Stderr, "gobench: bad argument %q\n", os.Args[index])
		os.Exit(2)
	}
	return n
}

func cpuNs() int64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return usage.Utime.Nano() + usage.Stime.Nano()
}

// handle is one request: some CPU work, then the answer.
func handle(id int, work int, done chan<- uint64) {
	var buf [256]byte
	h := fnv.New64a()
	for i := 0; i < work; i++ {
		buf[i%len(buf)] = byte(id + i)
		h.Write(buf[:])
	}
	done <- h.Sum64()
}

func main() {
	requests := arg(1, 200000)
	work := arg(2, 16)
	concurrency := arg(3, 64)

	done := make(chan uint64, concurrency)
	startCPU := cpuNs()
	start := time.Now()
	inFlight, finished := 0, 0
	var checksum uint64
	for id := 0; id < requests; id++ {
		if inFlight == concurrency {
			checksum ^= <-done
			inFlight--
			finished++
		}
		go handle(id, work, done)
		inFlight++
	}
	for ; inFlight > 0; inFlight-- {
		checksum ^= <-done
		finished++
	}
	elapsed := time.Since(start)
	cpu := cpuNs() - startCPU
	fmt.Printf("GOROUTINES %d\nELAPSED_NS %d\nCPU_NS %d\nRATE %.0f\n", requests,
		elapsed.Nanoseconds(), cpu, float64(requests)/elapsed.Seconds())
	if finished != requests || checksum == 1 {
		os.Exit(1)
	}
}
