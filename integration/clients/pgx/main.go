// A pgx (v4) application for the Postgres pooling tests: it does what Go
// services do through a transaction pooler and exits non-zero, naming the
// step, at the first error.
//
// Usage: pgx-client CONNSTRING TABLE
//
//   - a pgxpool of 8 connections, each with pgx's statement cache (named
//     statements "lrupsc_N_M", prepared once per connection, then bound);
//   - a statement cache of 2 that keeps evicting, so pgx sends
//     "deallocate lrupsc_N_M" as a simple query;
//   - the describe cache mode (unnamed statements);
//   - transactions, a pipelined batch, CopyFrom (binary COPY), and an
//     explicit Prepare and Deallocate.
package main

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

const workers = 8
const rounds = 20

func fail(step string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", step, err)
	os.Exit(1)
}

func main() {
	ctx := context.Background()
	connString, table := os.Args[1], os.Args[2]

	config, err := pgxpool.ParseConfig(connString + " pool_max_conns=8")
	if err != nil {
		fail("pool config", err)
	}
	pool, err := pgxpool.ConnectConfig(ctx, config)
	if err != nil {
		fail("pool connect", err)
	}
	var wait sync.WaitGroup
	errors := make(chan error, workers)
	for worker := 0; worker < workers; worker++ {
		wait.Add(1)
		go func(worker int) {
			defer wait.Done()
			errors <- poolWork(ctx, pool, table, worker)
		}(worker)
	}
	wait.Wait()
	close(errors)
	for err := range errors {
		if err != nil {
			fail("pool worker", err)
		}
	}
	pool.Close()

	evicting(ctx, connString+" statement_cache_capacity=2")
	evicting(ctx, connString+" statement_cache_mode=describe")
	explicit(ctx, connString, table)
	fmt.Println("ok")
}

// poolWork: cached statements, a transaction and a batch, per round.
func poolWork(ctx context.Context, pool *pgxpool.Pool, table string, worker int) error {
	for n := 0; n < rounds; n++ {
		var sum int
		if err := pool.QueryRow(ctx, "select $1::int + $2::int", worker, n).Scan(&sum); err != nil {
			return fmt.Errorf("query: %w", err)
		}
		if sum != worker+n {
			return fmt.Errorf("query: %d + %d gave %d", worker, n, sum)
		}
		tx, err := pool.Begin(ctx)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		if _, err := tx.Exec(ctx, "insert into "+table+" values ($1, $2)", worker, n); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		batch := &pgx.Batch{}
		batch.Queue("select $1::text || '-' || $2::text", fmt.Sprint(worker), fmt.Sprint(n))
		batch.Queue("select count(*) from "+table+" where worker = $1", worker)
		results := pool.SendBatch(ctx, batch)
		var text string
		if err := results.QueryRow().Scan(&text); err != nil {
			return fmt.Errorf("batch text: %w", err)
		}
		var count int64
		if err := results.QueryRow().Scan(&count); err != nil {
			return fmt.Errorf("batch count: %w", err)
		}
		if err := results.Close(); err != nil {
			return fmt.Errorf("batch close: %w", err)
		}
		if text != fmt.Sprintf("%d-%d", worker, n) || count != int64(n+1) {
			return fmt.Errorf("batch: %q and %d in round %d", text, count, n)
		}
	}
	return nil
}

// evicting: four statements in turn through one connection.
func evicting(ctx context.Context, connString string) {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		fail("connect ("+connString+")", err)
	}
	for round := 0; round < 10; round++ {
		for statement := 0; statement < 4; statement++ {
			var got int
			sql := fmt.Sprintf("select $1::int * 10 + %d", statement)
			if err := conn.QueryRow(ctx, sql, round).Scan(&got); err != nil {
				fail("evicting query ("+connString+")", err)
			}
			if got != round*10+statement {
				fail("evicting query ("+connString+")", fmt.Errorf("%d for %d, %d", got, round, statement))
			}
		}
	}
	if err := conn.Close(ctx); err != nil {
		fail("close", err)
	}
}

// explicit: CopyFrom, then a statement prepared and deallocated by name.
func explicit(ctx context.Context, connString string, table string) {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		fail("connect", err)
	}
	rows := make([][]interface{}, 0, 1000)
	for n := 0; n < 1000; n++ {
		rows = append(rows, []interface{}{int32(100), int32(n)})
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"worker", "n"}, pgx.CopyFromRows(rows))
	if err != nil || copied != 1000 {
		fail("copy from", fmt.Errorf("%d rows: %v", copied, err))
	}
	if _, err := conn.Prepare(ctx, "Mine", "select count(*) from "+table+" where worker = $1"); err != nil {
		fail("prepare", err)
	}
	var count int64
	if err := conn.QueryRow(ctx, "Mine", 100).Scan(&count); err != nil || count != 1000 {
		fail("prepared query", fmt.Errorf("%d rows: %v", count, err))
	}
	if err := conn.Deallocate(ctx, "Mine"); err != nil {
		fail("deallocate", err)
	}
	if err := conn.Close(ctx); err != nil {
		fail("close", err)
	}
}
