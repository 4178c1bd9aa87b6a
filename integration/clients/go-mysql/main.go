// A Go application on database/sql and go-sql-driver/mysql (Debian's
// 1.5) for the MySQL pooling tests: eight workers on a pool of eight
// connections, each with a statement prepared once (the driver prepares it
// again on every connection database/sql runs it on), parameterized
// queries (prepared, executed and closed each time, as the driver does
// without interpolateParams) and transactions. Exits non-zero, naming the
// step, at the first error; prints the table's row count and sum of n.
//
// Usage: go-mysql-client DSN TABLE
package main

import (
	"database/sql"
	"fmt"
	"os"
	"sync"

	_ "github.com/go-sql-driver/mysql"
)

func fail(step string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", step, err)
	os.Exit(1)
}

func main() {
	db, err := sql.Open("mysql", os.Args[1])
	if err != nil {
		fail("open", err)
	}
	table := os.Args[2]
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	var wait sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wait.Add(1)
		go func(w int) {
			defer wait.Done()
			stmt, err := db.Prepare("select ? * 100 + ?")
			if err != nil {
				errs <- fmt.Errorf("prepare: %w", err)
				return
			}
			defer stmt.Close()
			for n := 0; n < 20; n++ {
				var got int
				if err := stmt.QueryRow(w, n).Scan(&got); err != nil || got != w*100+n {
					errs <- fmt.Errorf("stmt query %d %d: %v %d", w, n, err, got)
					return
				}
				if err := db.QueryRow("select concat(?, '-', ?)", w, n).Scan(new(string)); err != nil {
					errs <- fmt.Errorf("query: %w", err)
					return
				}
				tx, err := db.Begin()
				if err != nil {
					errs <- fmt.Errorf("begin: %w", err)
					return
				}
				res, err := tx.Exec("insert into "+table+" values (?, ?)", w, n)
				if err != nil {
					errs <- fmt.Errorf("insert: %w", err)
					return
				}
				if rows, _ := res.RowsAffected(); rows != 1 {
					errs <- fmt.Errorf("insert affected %d", rows)
					return
				}
				if err := tx.Commit(); err != nil {
					errs <- fmt.Errorf("commit: %w", err)
					return
				}
			}
			errs <- nil
		}(w)
	}
	wait.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			fail("worker", err)
		}
	}
	var count, sum int
	if err := db.QueryRow("select count(*), sum(n) from "+table).Scan(&count, &sum); err != nil {
		fail("count", err)
	}
	fmt.Println(count, sum)
}
