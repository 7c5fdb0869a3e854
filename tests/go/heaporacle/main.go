// Command heaporacle is memtrace's live-heap oracle: it builds up a known live heap through a
// few marked sites while churning short-lived garbage, then writes the Go runtime's own heap
// profile, to compare with what memtrace reports as live per site. It imports runtime/pprof, so
// the runtime keeps its heap profiler on.
//
// Usage:
//
//	heaporacle [-duration D] [-profile FILE] [-rate R]
//
//	-duration D    run for D (default 10s; 0: until SIGTERM or SIGINT, building up in 5 s)
//	-profile FILE  where to write the heap profile (default $TMPDIR/heaporacle-<pid>.pb.gz)
//	-rate R        runtime.MemProfileRate, set first thing in main (default 524288, Go's
//	               default; flag parsing before it allocates a few hundred bytes)
//
// Output on stdout:
//
//	READY <pid>                       before the first allocation of the workload
//	SITE <name> <objects> <bytes>     at the end, per retain site: objects kept and their
//	                                  requested size in bytes (all still live)
//	MEMPROFILERATE <n>                runtime.MemProfileRate at the end
//	PROFILE <path>                    after writing the heap profile
//	DONE                              last; exit code 0
//
// The workload runs in ticks of 10 ms on the main goroutine. During the first half of the run
// each retain site allocates, at an even pace, objects that are kept until the end; then the
// heap is held. Every tick, all the way to the end, the churn site allocates 10 x 8 KiB
// (8 MB/s), each dead by the next allocation. Fully built, the live heap is:
//
//	retainA  2560 x []byte of 16384 B                     40 MiB
//	retainB  10240 x 1016-byte struct with pointers       ~10 MiB (size class 1024: 10 MiB)
//	retainC  8192 x []byte of 256 B                       2 MiB
//	churn    1 x []byte of 8192 B                         (about 0 after the final GC)
//
// Each site is the only allocation of its own non-inlined function, main.retainA, main.retainB,
// main.retainC and main.churn, so `go tool pprof -top -inuse_space` shows them by name. At the
// end (after D, or on SIGTERM or SIGINT, which ends a build-up early) it calls runtime.GC(),
// which returns after the cycle's sweep, so the profile's in-use figures are those of that
// completed cycle, and writes pprof.Lookup("heap").WriteTo(f, 0) (gzipped protobuf, readable
// with `go tool pprof -raw` or `go tool pprof -top -inuse_space <binary> <profile>`).
//
// With the default rate the profile's estimates are statistical: about 80 samples for retainA,
// 20 for retainB and 4 for retainC, so retainC may be off by half; a smaller -rate narrows it.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"
	"unsafe"
)

const (
	tick = 10 * time.Millisecond

	retainASize  = 16 << 10
	retainACount = 2560
	retainBCount = 10240
	retainCSize  = 256
	retainCCount = 8192

	churnSize    = 8 << 10
	churnPerTick = 10

	// buildUpForever is the build-up time when running until signalled.
	buildUpForever = 5 * time.Second
)

// record is 1016 bytes with a pointer: size class 1024, with or without a malloc header.
type record struct {
	next    *record
	id      int64
	payload [1000]byte
}

var (
	keptA [][]byte
	keptB *record
	nB    int
	keptC [][]byte
	sink  []byte
)

//go:noinline
func retainA() {
	b := make([]byte, retainASize) // SITE:retainA
	b[len(keptA)%retainASize] = 1
	keptA = append(keptA, b)
}

//go:noinline
func retainB() {
	r := &record{next: keptB, id: int64(nB)} // SITE:retainB
	r.payload[nB%len(r.payload)] = 1
	keptB = r
	nB++
}

//go:noinline
func retainC() {
	b := make([]byte, retainCSize) // SITE:retainC
	b[len(keptC)%retainCSize] = 1
	keptC = append(keptC, b)
}

//go:noinline
func churn(i int) {
	b := make([]byte, churnSize) // SITE:churn
	b[i%churnSize] = byte(i)
	sink = b
}

// target is how many of count objects are due after tick t of a build-up of buildTicks ticks.
func target(count, t, buildTicks int) int {
	if t+1 >= buildTicks {
		return count
	}
	return count * (t + 1) / buildTicks
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "run for this long (0: until SIGTERM or SIGINT)")
	profilePath := flag.String("profile", "", "where to write the heap profile (default $TMPDIR/heaporacle-<pid>.pb.gz)")
	rate := flag.Int("rate", 512*1024, "runtime.MemProfileRate")
	flag.Parse()
	runtime.MemProfileRate = *rate
	if flag.NArg() != 0 || *duration < 0 || *rate < 0 {
		fmt.Fprintln(os.Stderr, "usage: heaporacle [-duration D] [-profile FILE] [-rate R]")
		os.Exit(2)
	}
	if *profilePath == "" {
		*profilePath = filepath.Join(os.TempDir(), fmt.Sprintf("heaporacle-%d.pb.gz", os.Getpid()))
	}

	buildUp := *duration / 2
	if *duration == 0 {
		buildUp = buildUpForever
	}
	buildTicks := int(buildUp / tick)
	if buildTicks < 1 {
		buildTicks = 1
	}
	totalTicks := 0 // forever
	if *duration > 0 {
		totalTicks = int((*duration + tick - 1) / tick)
	}

	keptA = make([][]byte, 0, retainACount)
	keptC = make([][]byte, 0, retainCCount)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	timer := time.NewTimer(time.Hour)
	timer.Stop()

	// os.Stdout is unbuffered: the line is written before the workload starts.
	fmt.Printf("READY %d\n", os.Getpid())
	start := time.Now()
	churned := 0
loop:
	for t := 0; totalTicks == 0 || t < totalTicks; t++ {
		for len(keptA) < target(retainACount, t, buildTicks) {
			retainA()
		}
		for nB < target(retainBCount, t, buildTicks) {
			retainB()
		}
		for len(keptC) < target(retainCCount, t, buildTicks) {
			retainC()
		}
		for i := 0; i < churnPerTick; i++ {
			churn(churned)
			churned++
		}
		wait := time.Until(start.Add(time.Duration(t+1) * tick))
		if wait <= 0 {
			select {
			case <-stop:
				break loop
			default:
			}
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-stop:
			break loop
		}
	}

	runtime.GC()
	file, err := os.Create(*profilePath)
	if err == nil {
		err = pprof.Lookup("heap").WriteTo(file, 0)
		if closeErr := file.Close(); err == nil {
			err = closeErr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "heaporacle: writing the heap profile: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("SITE retainA %d %d\n", len(keptA), len(keptA)*retainASize)
	fmt.Printf("SITE retainB %d %d\n", nB, nB*int(unsafe.Sizeof(record{})))
	fmt.Printf("SITE retainC %d %d\n", len(keptC), len(keptC)*retainCSize)
	fmt.Printf("MEMPROFILERATE %d\n", runtime.MemProfileRate)
	fmt.Printf("PROFILE %s\n", *profilePath)
	fmt.Println("DONE")
	// The kept objects must stay reachable until the profile is written.
	runtime.KeepAlive(keptB)
}
