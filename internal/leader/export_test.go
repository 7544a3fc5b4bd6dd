package leader

// SetAfterTry sets the hook called after each attempt to take the lock.
func SetAfterTry(c *Config, f func(held bool, err error)) { c.afterTry = f }
