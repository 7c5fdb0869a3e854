// Command allocs is memtrace's accuracy oracle. Several goroutines allocate a deterministic
// mix of heap objects, each kind through its own non-inlined function whose allocating line
// is marked "// SITE:<name>"; at the end the program prints the Go runtime's own counts, to
// compare with what memtrace observed.
//
// Usage:
//
//	allocs [-goroutines G] [-exit N] [-echo-stdin] [-sites] [iterations]
//
// Flags and the iterations argument may come in any order. Each goroutine runs `iterations`
// rounds (default 32000); with the default 4 goroutines that is about 2.3 million heap
// allocations, taking well under 2 s untraced.
//
// Output on stdout, in this order:
//
//	ENV <value>                   if the environment variable MEMTRACE_TEST_ENV is set
//	<stdin, copied verbatim>      with -echo-stdin (otherwise stdin is never read)
//	SITE <name> <count> <bytes>   with -sites: per site, the allocations made and the sum of
//	                              the sizes passed to the allocator, over all goroutines
//	MALLOCS <n>                   runtime.MemStats.Mallocs after all goroutines finished
//	TOTAL_ALLOC <bytes>           runtime.MemStats.TotalAlloc
//	NUMGC <n>                     runtime.MemStats.NumGC
//
// The exit code is 0, or N with -exit N.
//
// Per goroutine and round r (from 0), the sites allocate:
//
//	tiny4     4 x new(int32)                       4 B, no pointers (tiny allocator)
//	tiny12    4 x new([3]int32)                    12 B, no pointers (tiny allocator)
//	small24   2 x 24-byte struct with pointers
//	small32   2 x 32-byte struct with pointers
//	bytes     2 x []byte of 100-500 B
//	medium    1 x []*node of 600-2000 B (has a malloc header from Go 1.22)
//	chunk     1 x []byte of 5-30 KB, when r%16 == 0
//	large     1 x []byte of 40-200 KB, when r%256 == 0
//	concat    1 x string concatenation of 6-30 B
//	append    6 x slice growth (8, 16, 32, 64, 128, 256 B) appending 20 int64s, when r%4 == 0
//	mapinsert 1 x map insert; the allocations depend on the Go version's map implementation
//	mapmake   1 x make(map), when r%512 == 0
//
// Goroutine 0 also calls runtime.GC() three times, at a quarter, half and three quarters of
// its rounds.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
)

// Allocation sites, in the order their SITE lines are printed.
const (
	siteTiny4 = iota
	siteTiny12
	siteSmall24
	siteSmall32
	siteBytes
	siteMedium
	siteChunk
	siteLarge
	siteConcat
	siteAppend
	numSites
)

var siteNames = [numSites]string{
	"tiny4", "tiny12", "small24", "small32", "bytes", "medium", "chunk", "large", "concat", "append",
}

const (
	ringSize      = 64
	largeRingSize = 8
)

// tinyObj is 12 bytes without pointers.
type tinyObj [3]int32

// pair is 24 bytes with pointers.
type pair struct {
	left, right *pair
	id          int64
}

// node is 32 bytes with a pointer.
type node struct {
	next    *node
	a, b, c int64
}

// worker holds one goroutine's most recent objects of each kind, so that every allocation
// escapes to the heap and stays reachable for a while, and the goroutine's per-site counts.
type worker struct {
	tiny4    [ringSize]*int32
	tiny12   [ringSize]*tinyObj
	small24  [ringSize]*pair
	small32  [ringSize]*node
	bytes    [ringSize][]byte
	medium   [ringSize][]*node
	chunk    [ringSize][]byte
	large    [largeRingSize][]byte
	concat   [ringSize]string
	appended [ringSize][]int64
	table    map[int64]*node

	count [numSites]uint64
	size  [numSites]uint64
	rng   uint64
}

// workers is global, so everything stored in a worker escapes.
var workers []*worker

// words are concatenated by the concat site; none is empty, so every concatenation allocates.
var words = []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda-mu-nu"}

func (w *worker) record(site int, size int) {
	w.count[site]++
	w.size[site] += uint64(size)
}

// random returns a deterministic pseudo-random number in [0, n).
func (w *worker) random(n int) int {
	w.rng = w.rng*6364136223846793005 + 1442695040888963407
	return int((w.rng >> 33) % uint64(n))
}

//go:noinline
func allocTiny4(w *worker, slot int, value int32) {
	p := new(int32) // SITE:tiny4
	*p = value
	w.tiny4[slot] = p
	w.record(siteTiny4, 4)
}

//go:noinline
func allocTiny12(w *worker, slot int, value int32) {
	p := new(tinyObj) // SITE:tiny12
	p[0], p[2] = value, value+1
	w.tiny12[slot] = p
	w.record(siteTiny12, 12)
}

//go:noinline
func allocSmall24(w *worker, slot int, id int64) {
	p := &pair{left: w.small24[(slot+1)%ringSize], id: id} // SITE:small24
	w.small24[slot] = p
	w.record(siteSmall24, 24)
}

//go:noinline
func allocSmall32(w *worker, slot int, value int64) {
	n := &node{a: value, b: value * 2} // SITE:small32
	w.small32[slot] = n
	w.record(siteSmall32, 32)
}

//go:noinline
func allocBytes(w *worker, slot int, size int) {
	b := make([]byte, size) // SITE:bytes
	b[size-1] = byte(slot)
	w.bytes[slot] = b
	w.record(siteBytes, size)
}

//go:noinline
func allocMedium(w *worker, slot int, length int) {
	s := make([]*node, length) // SITE:medium
	s[0] = w.small32[slot]
	w.medium[slot] = s
	w.record(siteMedium, 8*length)
}

//go:noinline
func allocChunk(w *worker, slot int, size int) {
	b := make([]byte, size) // SITE:chunk
	b[0] = 1
	w.chunk[slot] = b
	w.record(siteChunk, size)
}

//go:noinline
func allocLarge(w *worker, slot int, size int) {
	b := make([]byte, size) // SITE:large
	b[size/2] = 1
	w.large[slot%largeRingSize] = b
	w.record(siteLarge, size)
}

//go:noinline
func allocConcat(w *worker, slot int, first, second string) {
	s := first + second // SITE:concat
	w.concat[slot] = s
	w.record(siteConcat, len(s))
}

//go:noinline
func allocAppend(w *worker, slot int) {
	var s []int64
	for i := int64(0); i < 20; i++ {
		s = append(s, i) // SITE:append
	}
	w.appended[slot] = s
	w.count[siteAppend] += 6
	w.size[siteAppend] += 8 + 16 + 32 + 64 + 128 + 256
}

//go:noinline
func makeTable(w *worker) {
	w.table = make(map[int64]*node) // SITE:mapmake
}

//go:noinline
func insertIntoTable(w *worker, key int64, value *node) {
	w.table[key] = value // SITE:mapinsert
}

func run(id int, iterations int, w *worker) {
	for r := 0; r < iterations; r++ {
		slot := r % ringSize
		for k := 0; k < 4; k++ {
			allocTiny4(w, (slot+k)%ringSize, int32(r))
			allocTiny12(w, (slot+k)%ringSize, int32(k))
		}
		for k := 0; k < 2; k++ {
			allocSmall24(w, (slot+k)%ringSize, int64(r))
			allocSmall32(w, (slot+k)%ringSize, int64(r))
			allocBytes(w, (slot+k)%ringSize, 100+w.random(401))
		}
		allocMedium(w, slot, 75+w.random(176))
		if r%16 == 0 {
			allocChunk(w, slot, 5*1024+w.random(25*1024+1))
		}
		if r%256 == 0 {
			allocLarge(w, r/256, 40*1024+w.random(160*1024+1))
		}
		allocConcat(w, slot, words[w.random(len(words))], words[w.random(len(words))])
		if r%4 == 0 {
			allocAppend(w, slot)
		}
		if r%512 == 0 {
			makeTable(w)
		}
		insertIntoTable(w, int64(r), w.small32[slot])

		if id == 0 && r > 0 && (r == iterations/4 || r == iterations/2 || r == 3*iterations/4) {
			runtime.GC()
		}
	}
}

// parseArgs parses flags and the optional iterations argument, in any order.
func parseArgs() (iterations, goroutines, exitCode int, echoStdin, printSites bool) {
	flags := flag.NewFlagSet("allocs", flag.ExitOnError)
	flags.IntVar(&goroutines, "goroutines", 4, "number of allocating goroutines")
	flags.IntVar(&exitCode, "exit", 0, "exit with this code at the end")
	flags.BoolVar(&echoStdin, "echo-stdin", false, "copy stdin to stdout before allocating")
	flags.BoolVar(&printSites, "sites", false, "print per-site allocation counts")
	iterations = 32000
	args := os.Args[1:]
	var positional []string
	for {
		if err := flags.Parse(args); err != nil {
			os.Exit(2)
		}
		args = flags.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if len(positional) > 1 {
		fmt.Fprintln(os.Stderr, "usage: allocs [-goroutines G] [-exit N] [-echo-stdin] [-sites] [iterations]")
		os.Exit(2)
	}
	if len(positional) == 1 {
		n, err := strconv.Atoi(positional[0])
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "allocs: iterations must be a positive integer, not %q\n", positional[0])
			os.Exit(2)
		}
		iterations = n
	}
	if goroutines < 1 {
		fmt.Fprintln(os.Stderr, "allocs: -goroutines must be at least 1")
		os.Exit(2)
	}
	return iterations, goroutines, exitCode, echoStdin, printSites
}

func main() {
	iterations, goroutines, exitCode, echoStdin, printSites := parseArgs()
	if value, ok := os.LookupEnv("MEMTRACE_TEST_ENV"); ok {
		fmt.Printf("ENV %s\n", value)
	}
	if echoStdin {
		if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
			fmt.Fprintf(os.Stderr, "allocs: copying stdin: %v\n", err)
			os.Exit(1)
		}
	}

	workers = make([]*worker, goroutines)
	var wg sync.WaitGroup
	for id := 0; id < goroutines; id++ {
		w := &worker{rng: uint64(id)*0x9e3779b97f4a7c15 + 1}
		workers[id] = w
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			run(id, iterations, w)
		}(id)
	}
	wg.Wait()

	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	if printSites {
		var count, size [numSites]uint64
		for _, w := range workers {
			for site := 0; site < numSites; site++ {
				count[site] += w.count[site]
				size[site] += w.size[site]
			}
		}
		for site := 0; site < numSites; site++ {
			fmt.Printf("SITE %s %d %d\n", siteNames[site], count[site], size[site])
		}
	}
	fmt.Printf("MALLOCS %d\nTOTAL_ALLOC %d\nNUMGC %d\n", stats.Mallocs, stats.TotalAlloc, stats.NumGC)
	os.Exit(exitCode)
}
