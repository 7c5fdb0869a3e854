module weakdeath

go 1.21
