"""The remote backend: real Docker hosts over ssh or TLS, held by a lock, checked before
anything is made, their network read and put back, faults between them, their clean-up,
and the lab that stands such hosts up on one machine."""
