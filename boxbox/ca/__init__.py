"""The certificate authority behind `boxbox ca`: `authority` signs, `names` maps CN <-> account,
`index` records what was issued."""
