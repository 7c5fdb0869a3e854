module symtest

go 1.21
