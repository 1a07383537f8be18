"""Application services (bridges): registration files (`registration`), their users'
registration and login (`accounts`), the transactions pushed to them (`sender`) and the
queries about users and aliases they may create on demand (`queries`)."""
