"""Imports a package the miners do not have: requirements.txt beside it has the pool
install it before this program starts."""
import hello_aic

print(hello_aic.greeting())
