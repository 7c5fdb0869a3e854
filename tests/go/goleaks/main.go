// Command goleaks is memtrace's goroutine-leak corpus: one program, several workloads chosen
// with -pattern. Six patterns leak goroutines the way real programs do, at a steady rate; two
// controls keep goroutines that must NOT be reported as leaks. Every pattern also runs the same
// background: a pool of 4 workers fed 20 jobs per second, and 50 short-lived goroutines per
// second (each lives 0-300 ms), so a leak has to be told apart from ordinary goroutines.
//
// Usage:
//
//	goleaks -pattern NAME [-duration D] [-rate R] [-leakprofile FILE -leakprofile-after D]
//	goleaks -list
//
//	-pattern NAME        the workload, one of the names below, or "all": every leak and
//	                     control at once
//	-duration D          stop after D (default 30s; 0: run until SIGTERM or SIGINT)
//	-rate R              leaked goroutines per second per leaky pattern (default 10)
//	-leakprofile FILE    write the runtime's goroutineleak profile (runtime/pprof, debug=2:
//	                     every goroutine's stack, leaked ones marked "(leaked)") to FILE, once,
//	                     -leakprofile-after (default 8s) after the start. Go versions without
//	                     that profile print "NO LEAK PROFILE" instead.
//	-list                print "PATTERN <name> leak" or "PATTERN <name> control" per pattern
//
// Output on stdout:
//
//	READY <pid>                     once, before the workload starts
//	t=<s> goroutines=<n>            once per second: runtime.NumGoroutine()
//	LEAKPROFILE <n>                 after writing the profile: n goroutines marked leaked
//	DONE                            at the end; exit code 0
//
// Leaky patterns. The `go` statement of each leaked goroutine is on the line marked
// // SITE:<pattern>.
//
//	timeoutsend   a call with a timeout: the result is sent on an unbuffered channel the caller
//	              stopped reading when its 5 ms timeout fired (backend takes 20 ms). Blocks on
//	              "chan send". The channel is unreachable once the caller returned.
//	ctxnever      a watcher selects on ctx.Done() and an update channel, but the context's
//	              cancel function was dropped and no update ever comes. Blocks on "select".
//	ticker        a poller loops over a time.Ticker that is never stopped and never told to
//	              quit. Wakes every 200 ms; otherwise blocked on "chan receive".
//	mutex         a request waits for a per-request mutex whose holder returned without
//	              unlocking it. Blocks on "sync.Mutex.Lock".
//	rangeopen     a consumer ranges over a job channel its producer never closes after the
//	              last job. Blocks on "chan receive".
//	globalchan    results are sent on a channel held in a global variable that nothing reads
//	              any more. Blocks on "chan send"; the channel stays reachable from the
//	              global, so the runtime's goroutineleak profile cannot see this leak.
//
// Controls:
//
//	pool          a fixed pool of 16 workers waiting for jobs that come every 500 ms.
//	shortlived    200 goroutines per second, each lives 0-1500 ms (sleeping, or waiting on a
//	              channel that its creator closes).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"
)

type pattern struct {
	name  string
	leaks bool
	// start runs the pattern until stop is closed; leaky patterns leak `rate` goroutines/s.
	start func(stop <-chan struct{})
}

var (
	rate     float64
	errSlow  = errors.New("timeout")
	sink     sync.Map
	patterns = []pattern{
		{"timeoutsend", true, every(timeoutSend)},
		{"ctxnever", true, every(ctxNever)},
		{"ticker", true, every(tickerLoop)},
		{"mutex", true, every(mutexWait)},
		{"rangeopen", true, every(rangeOpen)},
		{"globalchan", true, every(globalChan)},
		{"pool", false, workerPool},
		{"shortlived", false, shortLived},
	}
)

// every calls leak `rate` times per second until stop.
func every(leak func(seq int)) func(stop <-chan struct{}) {
	return func(stop <-chan struct{}) {
		interval := time.Duration(float64(time.Second) / rate)
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			case <-ticker.C:
				leak(seq)
			}
		}
	}
}

//go:noinline
func slowBackend(seq int) int {
	time.Sleep(20 * time.Millisecond)
	return seq * 2
}

// fetchWithTimeout leaks its sender when the timeout wins.
func fetchWithTimeout(seq int, timeout time.Duration) (int, error) {
	reply := make(chan int)
	go func() { reply <- slowBackend(seq) }() // SITE:timeoutsend
	select {
	case v := <-reply:
		return v, nil
	case <-time.After(timeout):
		return 0, errSlow
	}
}

func timeoutSend(seq int) {
	// Each request is handled on its own short-lived goroutine, as a server would.
	go func() { _, _ = fetchWithTimeout(seq, 5*time.Millisecond) }()
}

func watch(ctx context.Context, updates <-chan string) {
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			sink.Store(u, true)
		}
	}
}

func ctxNever(seq int) {
	ctx, cancel := context.WithCancel(context.Background())
	_ = cancel // dropped: nobody will ever cancel this context
	updates := make(chan string)
	go watch(ctx, updates) // SITE:ctxnever
}

func poll(seq int, t *time.Ticker) {
	for range t.C {
		sink.Store(seq, time.Now())
	}
}

func tickerLoop(seq int) {
	t := time.NewTicker(200 * time.Millisecond)
	go poll(seq, t) // SITE:ticker
}

func lockAndForget(mu *sync.Mutex) {
	mu.Lock()
	// The early return forgets mu.Unlock().
}

func waitForLock(mu *sync.Mutex, seq int) {
	mu.Lock()
	sink.Store(seq, true)
	mu.Unlock()
}

func mutexWait(seq int) {
	mu := new(sync.Mutex)
	lockAndForget(mu)
	go waitForLock(mu, seq) // SITE:mutex
}

func consume(jobs <-chan int) {
	for j := range jobs {
		sink.Store(j, true)
	}
}

func rangeOpen(seq int) {
	jobs := make(chan int, 4)
	go consume(jobs) // SITE:rangeopen
	for i := 0; i < 3; i++ {
		jobs <- seq*4 + i
	}
	// Nobody closes jobs.
}

// results is read by nobody once the collector below has stopped.
var results = make(chan int)

func init() {
	// The collector reads ten results and quits; the senders keep coming.
	go func() {
		for i := 0; i < 10; i++ {
			<-results
		}
	}()
}

func publish(seq int) {
	results <- seq
}

func globalChan(seq int) {
	go publish(seq) // SITE:globalchan
}

func workerPool(stop <-chan struct{}) {
	jobs := make(chan int)
	for i := 0; i < 16; i++ {
		go func() { // SITE:pool
			for j := range jobs {
				sink.Store(j, true)
			}
		}()
	}
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-stop:
			close(jobs)
			return
		case <-ticker.C:
			jobs <- seq
		}
	}
}

func shortLived(stop <-chan struct{}) {
	rng := rand.New(rand.NewSource(2))
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-stop:
			return
		case <-ticker.C:
		}
		life := time.Duration(rng.Int63n(int64(1500 * time.Millisecond)))
		if seq%2 == 0 {
			go func() { time.Sleep(life) }() // SITE:shortlived
		} else {
			done := make(chan struct{})
			go func() { <-done }() // SITE:shortlived_chan
			time.AfterFunc(life, func() { close(done) })
		}
	}
}

// background runs in every pattern: a small pool and a trickle of short goroutines.
func background(stop <-chan struct{}) {
	jobs := make(chan int)
	for i := 0; i < 4; i++ {
		go func() {
			for j := range jobs {
				sink.Store(j%64, j)
			}
		}()
	}
	rng := rand.New(rand.NewSource(1))
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-stop:
			close(jobs)
			return
		case <-ticker.C:
		}
		if seq%5 == 0 {
			jobs <- seq
		}
		if seq%2 == 0 {
			life := time.Duration(rng.Int63n(int64(300 * time.Millisecond)))
			go func() { time.Sleep(life) }()
		}
	}
}

// writeLeakProfile writes the goroutineleak profile with every goroutine's stack and returns
// how many goroutines it marks leaked, or -1 when this Go has no such profile.
func writeLeakProfile(path string) int {
	profile := pprof.Lookup("goroutineleak")
	if profile == nil {
		return -1
	}
	var out strings.Builder
	if err := profile.WriteTo(&out, 2); err != nil {
		fmt.Fprintln(os.Stderr, "goleaks:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "goleaks:", err)
		os.Exit(1)
	}
	return strings.Count(out.String(), "(leaked)")
}

func main() {
	name := flag.String("pattern", "", "the workload to run, or all")
	duration := flag.Duration("duration", 30*time.Second, "stop after this long (0: until signalled)")
	flag.Float64Var(&rate, "rate", 10, "leaked goroutines per second per leaky pattern")
	leakProfile := flag.String("leakprofile", "", "write the goroutineleak profile to this file")
	leakProfileAfter := flag.Duration("leakprofile-after", 8*time.Second, "when to write it")
	list := flag.Bool("list", false, "list the patterns and exit")
	flag.Parse()
	if *list {
		for _, p := range patterns {
			kind := "control"
			if p.leaks {
				kind = "leak"
			}
			fmt.Printf("PATTERN %s %s\n", p.name, kind)
		}
		return
	}
	var chosen []pattern
	for _, p := range patterns {
		if p.name == *name || *name == "all" {
			chosen = append(chosen, p)
		}
	}
	if len(chosen) == 0 || flag.NArg() != 0 || !(rate > 0) || *duration < 0 {
		fmt.Fprintln(os.Stderr, "usage: goleaks -pattern NAME|all [-duration D] [-rate R] [-leakprofile FILE] | -list")
		os.Exit(2)
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	stop := make(chan struct{})
	fmt.Printf("READY %d\n", os.Getpid())
	go background(stop)
	for _, p := range chosen {
		go p.start(stop)
	}
	var end <-chan time.Time
	if *duration > 0 {
		end = time.After(*duration)
	}
	var profileAt <-chan time.Time
	if *leakProfile != "" {
		profileAt = time.After(*leakProfileAfter)
	}
	second := time.NewTicker(time.Second)
	defer second.Stop()
	for t := 1; ; {
		select {
		case <-second.C:
			fmt.Printf("t=%d goroutines=%d\n", t, runtime.NumGoroutine())
			t++
			continue
		case <-profileAt:
			if n := writeLeakProfile(*leakProfile); n < 0 {
				fmt.Println("NO LEAK PROFILE")
			} else {
				fmt.Printf("LEAKPROFILE %d\n", n)
			}
			continue
		case <-end:
		case <-signals:
		}
		break
	}
	close(stop)
	fmt.Println("DONE")
}
