module goleaks

go 1.21
