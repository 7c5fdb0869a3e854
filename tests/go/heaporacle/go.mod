module heaporacle

go 1.21
