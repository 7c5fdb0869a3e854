// Command gocount is the oracle for memtrace's goroutine counts: it creates and ends goroutines
// in known numbers and prints runtime.NumGoroutine() once the count is steady.
//
// Usage:
//
//	gocount [-parked N] [-churn D] [-rate R] [-late M] [-duration D]
//
//	-parked N    goroutines started first, parked forever on a channel (default 50)
//	-churn D     then, for D (default 3s), start R goroutines per second (default 5000) that
//	             each exit at once, half of them after starting a child that exits too
//	-late M      then start M more goroutines parked forever (default 20)
//	-duration D  then stay steady for D (default 0: until SIGTERM or SIGINT)
//
// Output on stdout:
//
//	READY <pid>             once, after the parked goroutines started
//	CHURNED <n>             after the churn: goroutines it started (children included)
//	STEADY <numgoroutine>   once nothing changes any more: runtime.NumGoroutine()
//	DONE                    at the end; exit code 0
//
// Besides its own, the program has the main goroutine and os/signal's watcher.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"
)

var forever = make(chan struct{})

//go:noinline
func parkedEarly() { <-forever }

//go:noinline
func parkedLate() { <-forever }

func churn(d time.Duration, rate int) int {
	var wg sync.WaitGroup
	started := 0
	tick := 10 * time.Millisecond
	perTick := rate / 100
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		for i := 0; i < perTick; i++ {
			wg.Add(1)
			started++
			if i%2 == 0 {
				go func() { wg.Done() }() // SITE:churn
				continue
			}
			wg.Add(1)
			started++
			go func() { // SITE:churn_parent
				go func() { wg.Done() }() // SITE:churn_child
				wg.Done()
			}()
		}
		time.Sleep(tick)
	}
	wg.Wait()
	return started
}

func main() {
	parked := flag.Int("parked", 50, "goroutines parked from the start")
	churnFor := flag.Duration("churn", 3*time.Second, "how long to churn")
	rate := flag.Int("rate", 5000, "goroutines started per second while churning")
	late := flag.Int("late", 20, "goroutines parked after the churn")
	duration := flag.Duration("duration", 0, "how long to stay steady (0: until signalled)")
	flag.Parse()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	for i := 0; i < *parked; i++ {
		go parkedEarly() // SITE:early
	}
	fmt.Printf("READY %d\n", os.Getpid())
	fmt.Printf("CHURNED %d\n", churn(*churnFor, *rate))
	for i := 0; i < *late; i++ {
		go parkedLate() // SITE:late
	}
	// Let the last goroutines of the churn finish exiting (wg.Done runs before goexit).
	for i := 0; i < 500 && runtime.NumGoroutine() != *parked+*late+2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	fmt.Printf("STEADY %d\n", runtime.NumGoroutine())
	if *duration > 0 {
		select {
		case <-time.After(*duration):
		case <-signals:
		}
	} else {
		<-signals
	}
	fmt.Println("DONE")
}
